"""Integer group quantization: nbwoq vs the plain-torch formula vs the memory floor.

``time_*`` is nbwoq alone; the ``track_*`` ratios time nbwoq, the plain-torch
implementation of the reference's formula and an in-place ``w *= 1.0`` pass inside the
same call, so they compare like with like on a shared machine. ``track_extra_peak_*``
measures, in a fresh process, the peak resident memory an in-place call adds beyond
the weight itself, as a percentage of the weight's size.

Run ``python asv_bench/benchmarks/bench_quant.py`` for a quick table of the targets.
"""

import subprocess
import sys

import numpy as np

try:
    from . import common
except ImportError:  # run as a script
    import common

import nbwoq
from implementations import IMPLEMENTATIONS

QUANT = IMPLEMENTATIONS["quant_tensor"]  # kernel, reference, naive, torch


class QuantTensorInt:
    params = (
        ["4096x4096", "11008x4096"],
        ["float32", "bfloat16"],
        [2, 3, 4, 8],
        ["asym", "sym"],
        [32, 128, -1],
    )
    param_names = ["shape", "dtype", "bits", "scheme", "group_size"]
    timeout = 600

    def setup(self, shape, dtype, bits, scheme, group_size):
        common.warm_up()
        self.w = common.fresh(shape, dtype)

    def time_quant_tensor(self, shape, dtype, bits, scheme, group_size):
        nbwoq.quant_tensor(self.w, bits=bits, group_size=group_size, scheme=scheme)

    def _times(self, shape, dtype, bits, scheme, group_size, repeat=5):
        kw = dict(bits=bits, group_size=group_size, scheme=scheme)
        t_nb = common.median_time(lambda w: QUANT["kernel"].call(w, **kw), lambda: common.fresh(shape, dtype), repeat)
        t_floor = common.median_time(common.floor_pass, lambda: common.fresh(shape, dtype), repeat)
        t_torch = common.median_time(lambda t: QUANT["torch"].call(t, **kw), lambda: common.torch_copy(shape, dtype), 3)
        return t_nb, t_floor, t_torch

    def track_speedup_vs_torch(self, shape, dtype, bits, scheme, group_size):
        t_nb, _, t_torch = self._times(shape, dtype, bits, scheme, group_size)
        return t_torch / t_nb

    track_speedup_vs_torch.unit = "x"

    def track_ratio_to_floor(self, shape, dtype, bits, scheme, group_size):
        t_nb, t_floor, _ = self._times(shape, dtype, bits, scheme, group_size)
        return t_nb / t_floor

    track_ratio_to_floor.unit = "x floor"


_PEAK_BODY = """
    import numpy as np
    import nbwoq
    shape, dtype, kwargs = ARGS
    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    if dtype == "bfloat16":
        import ml_dtypes
        w = w.astype(ml_dtypes.bfloat16)
    nbwoq.quant_tensor(w[:8].copy(), **kwargs)   # compile / load the cache, start the threads
    before = reset_peak()
    result = nbwoq.quant_tensor(w, **kwargs)
    assert (result[0] if isinstance(result, tuple) else result) is w
    report(before, w.nbytes)
"""


def extra_peak_percent(shape, dtype, **kwargs):
    """Peak RSS an in-place call adds, in % of the weight (fresh process, warm cache)."""
    return common.extra_peak_percent_of(_PEAK_BODY, [shape, dtype, kwargs])


class QuantTensorMemory:
    params = (["float32", "bfloat16"], ["asym", "sym"], [32, 128])
    param_names = ["dtype", "scheme", "group_size"]
    timeout = 300

    def track_extra_peak_percent_4096x4096(self, dtype, scheme, group_size):
        return extra_peak_percent([4096, 4096], dtype, bits=4, group_size=group_size, scheme=scheme)

    track_extra_peak_percent_4096x4096.unit = "% of weight"


class ImportAndFirstCall:
    """A second process with a warm Numba cache: import + first quant_tensor call."""

    timeout = 300

    def track_import_and_first_call_seconds(self):
        code = ("import time; t=time.perf_counter(); import numpy as np, nbwoq; "
                "nbwoq.quant_tensor(np.ones((64, 256), np.float32), bits=4, group_size=128); "
                "print(time.perf_counter()-t)")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # warm the cache
        times = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout) for _ in range(3)]
        return float(np.median(times))

    track_import_and_first_call_seconds.unit = "s"


if __name__ == "__main__":
    common.warm_up()
    bench = QuantTensorInt()
    print(f"{'shape':>11} {'dtype':>8} {'bits':>4} {'scheme':>6} {'g':>4} {'nbwoq ms':>9} {'floor ms':>9} "
          f"{'torch ms':>9} {'x floor':>8} {'x faster':>9}")
    for dtype in ("float32", "bfloat16"):
        for scheme in ("asym", "sym"):
            for g in (128, 32, -1):
                t_nb, t_floor, t_torch = bench._times("4096x4096", dtype, 4, scheme, g)
                print(f"{'4096x4096':>11} {dtype:>8} {4:>4} {scheme:>6} {g:>4} {t_nb*1e3:9.2f} {t_floor*1e3:9.2f} "
                      f"{t_torch*1e3:9.2f} {t_nb/t_floor:8.2f} {t_torch/t_nb:9.1f}")
    for dtype in ("float32", "bfloat16"):
        for scheme in ("asym", "sym"):
            print(f"extra peak memory {dtype} {scheme} g128: "
                  f"{extra_peak_percent([4096, 4096], dtype, bits=4, group_size=128, scheme=scheme):.2f}% of weight")
    print(f"import + first call (warm cache): {ImportAndFirstCall().track_import_and_first_call_seconds():.3f} s")
