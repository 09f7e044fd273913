"""The torch face: what ``nbwoq_torch`` adds over the core on the same weight.

``nbwoq_torch.quant_tensor`` hands a CPU tensor's memory to the core's kernels as a NumPy
view (bfloat16 through its int16 pattern), so it should cost the core's time and no
memory. ``track_overhead_percent`` times the torch face and the core alternately inside
one call, each on a fresh copy of the same seeded 4096x4096 weight (copies not timed),
and reports the difference of the medians in % of the core's median (target <= 5%);
on a busy machine that difference is mostly noise, so ``track_overhead_microseconds``
also gives the face's fixed cost per call, measured on a small weight.
``track_ratio_to_floor`` and ``track_speedup_vs_torch`` put the torch face next to the
``w *= 1.0`` memory floor and the plain-torch formula (``common.torch_quant_tensor``, as
``tests/implementations.py`` registers it) measured in the same call.
``track_extra_peak_percent`` measures, in a fresh process, the peak resident memory an
in-place bfloat16 call adds beyond the weight, as a percentage of the weight's size
(target <= 1%).

Run ``python asv_bench/benchmarks/bench_torch.py`` for a quick table of the targets.
"""

try:
    from . import common
except ImportError:  # run as a script
    import common

import nbwoq
from implementations import IMPLEMENTATIONS

SHAPE = "4096x4096"
KWARGS = dict(bits=4, group_size=128, scheme="asym")


def _torch():
    import torch

    import nbwoq_torch

    return torch, nbwoq_torch


def warm_up_torch():
    """Load the kernels through the torch face once (float32 and bfloat16)."""
    torch, nbwoq_torch = _torch()
    common.warm_up()
    for dtype in (torch.float32, torch.bfloat16):
        for return_int in (False, True):
            nbwoq_torch.quant_tensor(torch.randn(8, 256).to(dtype), return_int=return_int, **KWARGS)


class TorchFace:
    params = (["float32", "bfloat16"], [False, True])
    param_names = ["dtype", "return_int"]
    timeout = 600

    def setup(self, dtype, return_int):
        warm_up_torch()
        self.t = common.torch_copy(SHAPE, dtype)
        self.a = common.fresh(SHAPE, dtype)

    def time_torch_face(self, dtype, return_int):
        _, nbwoq_torch = _torch()
        nbwoq_torch.quant_tensor(self.t, return_int=return_int, **KWARGS)

    def time_core(self, dtype, return_int):
        nbwoq.quant_tensor(self.a, return_int=return_int, **KWARGS)

    def _times(self, dtype, return_int, repeat=15):
        _, nbwoq_torch = _torch()
        t_core, t_face, t_floor = common.interleaved_medians(
            [lambda a: nbwoq.quant_tensor(a, return_int=return_int, **KWARGS),
             lambda t: nbwoq_torch.quant_tensor(t, return_int=return_int, **KWARGS),
             common.floor_pass],
            [lambda: common.fresh(SHAPE, dtype)] + [lambda: common.torch_copy(SHAPE, dtype)] * 2,
            repeat)
        return t_core, t_face, t_floor

    def track_overhead_percent(self, dtype, return_int):
        t_core, t_face, _ = self._times(dtype, return_int)
        return 100.0 * (t_face - t_core) / t_core

    track_overhead_percent.unit = "% over core"

    def track_ratio_to_floor(self, dtype, return_int):
        _, t_face, t_floor = self._times(dtype, return_int, repeat=7)
        return t_face / t_floor

    track_ratio_to_floor.unit = "x floor"

    def track_speedup_vs_torch(self, dtype, return_int):
        _, nbwoq_torch = _torch()
        t_face, t_torch = common.interleaved_medians(
            [lambda t: nbwoq_torch.quant_tensor(t, return_int=return_int, **KWARGS),
             lambda t: IMPLEMENTATIONS["quant_tensor"]["torch"].call(t, **KWARGS)],
            [lambda: common.torch_copy(SHAPE, dtype), lambda: common.torch_copy(SHAPE, dtype)], repeat=3)
        return t_torch / t_face

    track_speedup_vs_torch.unit = "x"


class TorchFaceCallCost:
    """The torch face's fixed cost per call (views in, tensors out), in microseconds: the
    difference of median times on a small weight, where the kernels take little time.
    One thread, so that waking a team of threads does not drown the difference."""

    params = (["float32", "bfloat16"], [False, True])
    param_names = ["dtype", "return_int"]
    timeout = 300

    def setup(self, dtype, return_int):
        warm_up_torch()

    def track_overhead_microseconds(self, dtype, return_int):
        torch, nbwoq_torch = _torch()
        t = torch.randn(64, 256).to(getattr(torch, dtype))
        a = t.float().numpy().astype(common.DTYPES[dtype])
        threads = nbwoq.get_num_threads()
        nbwoq.set_num_threads(1)
        try:
            t_core, t_face = common.interleaved_medians(
                [lambda x: nbwoq.quant_tensor(x, return_int=return_int, **KWARGS),
                 lambda x: nbwoq_torch.quant_tensor(x, return_int=return_int, **KWARGS)],
                [lambda: a, lambda: t], repeat=2001)
        finally:
            nbwoq.set_num_threads(threads)
        return 1e6 * (t_face - t_core)

    track_overhead_microseconds.unit = "us per call"


_PEAK_BODY = """
    import torch, nbwoq_torch
    dtype, kwargs = ARGS
    dtype = getattr(torch, dtype)
    nbwoq_torch.quant_tensor(torch.randn(16, 512).to(dtype), **kwargs)   # load the kernels
    w = torch.empty(4096, 4096, dtype=dtype)
    w.normal_()                                                           # touch every page
    before = reset_peak()
    result = nbwoq_torch.quant_tensor(w, **kwargs)
    assert (result[0] if isinstance(result, tuple) else result) is w
    report(before, w.numel() * w.element_size())
"""


def extra_peak_percent(dtype, **kwargs):
    """Peak RSS an in-place torch-face call adds, in % of the weight (fresh process)."""
    return common.extra_peak_percent_of(_PEAK_BODY, [dtype, kwargs])


class TorchFaceMemory:
    params = (["bfloat16", "float32"],)
    param_names = ["dtype"]
    timeout = 300

    def track_extra_peak_percent(self, dtype):
        return extra_peak_percent(dtype, **KWARGS)

    track_extra_peak_percent.unit = "% of weight"


if __name__ == "__main__":
    warm_up_torch()
    bench = TorchFace()
    print(f"{SHAPE} quant_tensor bits=4 g128 asym, medians of interleaved calls")
    print(f"{'dtype':>8} {'return_int':>10} {'core ms':>8} {'face ms':>8} {'overhead':>9} {'floor ms':>9} {'x floor':>8}")
    for dtype in ("float32", "bfloat16"):
        for return_int in (False, True):
            t_core, t_face, t_floor = bench._times(dtype, return_int, repeat=21)
            print(f"{dtype:>8} {str(return_int):>10} {t_core * 1e3:8.2f} {t_face * 1e3:8.2f} "
                  f"{100 * (t_face - t_core) / t_core:8.2f}% {t_floor * 1e3:9.2f} {t_face / t_floor:8.2f}")
    cost = TorchFaceCallCost()
    for dtype in ("float32", "bfloat16"):
        for return_int in (False, True):
            print(f"fixed cost of the torch face per call ({dtype}, return_int={return_int}): "
                  f"{cost.track_overhead_microseconds(dtype, return_int):.1f} us")
    for dtype in ("float32", "bfloat16"):
        print(f"speed-up vs plain torch ({dtype}, fake-quant): {bench.track_speedup_vs_torch(dtype, False):.1f}x")
    for dtype in ("bfloat16", "float32"):
        print(f"extra peak memory, in-place {dtype} quant_tensor: {extra_peak_percent(dtype, **KWARGS):.3f}% of weight")
