"""4-bit codebooks, quantization with known scales, double quantization: nbwoq vs the
plain-torch formula vs the memory floor.

``time_*`` is nbwoq alone. The ``track_*`` ratios time nbwoq, the plain-torch
implementation of the reference's formula and an in-place ``w *= 1.0`` pass inside the
same call, the calls taking turns (``common.interleaved_medians``) so that machine
load falls on all of them alike. ``track_extra_peak_percent`` measures, in a fresh
process, the peak resident memory a call adds beyond the weight (outputs such as the
returned scales included), as a percentage of the weight's size.

The plain-torch references are the reference library's formulas in torch
(``common.py``; ``tests/implementations.py`` lists them and the tests check them):

* codebooks: per group ``scale = absmax / max(levels)``, ``w / scale``, then one
  ``torch.where`` per level accumulated into a zero tensor (the reference's loop);
* ``quant_weight_w_scale``: the reference's loop over groups in Python, each group
  ``round(w / scale + zp)`` into a new tensor (codebooks: the codebook loop per group);
  ``WScaleIntVectorizedTorch`` also times the integer formula as one reshaped torch
  expression;
* double quantization: asym 4-bit codes, the scales' mean subtracted, the scales
  fake-quantized (sym 8-bit, groups of 256), the mean added back, the weight
  dequantized with them.

Run ``python asv_bench/benchmarks/bench_codebook.py`` for a quick table of the targets
(4096x4096 float32: >= 30x the plain-torch formula for nf4/fp4 g64 and
quant_weight_w_scale g128, extra peak memory <= 1% of the weight).
"""

import sys

try:
    from . import common
except ImportError:  # run as a script
    import common

import nbwoq
from implementations import IMPLEMENTATIONS

CODEBOOK = IMPLEMENTATIONS["quant_tensor_codebook"]
W_SCALE = IMPLEMENTATIONS["quant_weight_w_scale"]
DOUBLE_QUANT = IMPLEMENTATIONS["double_quant"]

CODEBOOK_GROUP = 64
W_SCALE_GROUP = 128
DQ_GROUP = 128


# --- benchmarks ----------------------------------------------------------------------------


class Codebook:
    """quant_tensor with nf4/fp4, groups of 64: fake quantization and codes."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"], ["nf4", "fp4"], [False, True])
    param_names = ["shape", "dtype", "codebook", "return_int"]
    timeout = 900

    def setup(self, shape, dtype, codebook, return_int):
        common.warm_up_codebook()
        self.w = common.fresh(shape, dtype)

    def _call(self, codebook, return_int):
        return lambda w: nbwoq.quant_tensor(w, group_size=CODEBOOK_GROUP, dtype=codebook, return_int=return_int)

    def time_quant_tensor(self, shape, dtype, codebook, return_int):
        self._call(codebook, return_int)(self.w)

    def _times(self, shape, dtype, codebook, return_int, repeat=5):
        return common.interleaved_medians(
            [self._call(codebook, return_int), common.floor_pass,
             lambda t: CODEBOOK["torch"].call(t, group_size=CODEBOOK_GROUP, dtype=codebook, return_int=return_int)],
            [lambda: common.fresh(shape, dtype)] * 2 + [lambda: common.torch_copy(shape, dtype)], repeat)

    def track_speedup_vs_torch(self, shape, dtype, codebook, return_int):
        t_nb, _, t_torch = self._times(shape, dtype, codebook, return_int, repeat=3)
        return t_torch / t_nb

    track_speedup_vs_torch.unit = "x"

    def track_ratio_to_floor(self, shape, dtype, codebook, return_int):
        t_nb, t_floor, _ = self._times(shape, dtype, codebook, return_int)
        return t_nb / t_floor

    track_ratio_to_floor.unit = "x floor"


class WScale:
    """quant_weight_w_scale with the scales (and zero points) of quant_tensor, g128."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"], ["int", "nf4"])
    param_names = ["shape", "dtype", "format"]
    timeout = 900

    def setup(self, shape, dtype, format):
        common.warm_up_codebook()
        _, self.scale, self.zp = nbwoq.quant_tensor(common.fresh(shape, dtype), group_size=W_SCALE_GROUP,
                                                    dtype=format, return_int=True)
        self.w = common.fresh(shape, dtype)

    def _call(self, format):
        return lambda w: nbwoq.quant_weight_w_scale(w, self.scale, self.zp, W_SCALE_GROUP, format)

    def _torch_params(self):
        torch = common.torch_or_none()
        zp = None if self.zp is None else torch.from_numpy(self.zp)
        return torch.from_numpy(self.scale), zp

    def time_quant_weight_w_scale(self, shape, dtype, format):
        self._call(format)(self.w)

    def track_speedup_vs_torch(self, shape, dtype, format):
        scale, zp = self._torch_params()
        t_nb, t_torch = common.interleaved_medians(
            [self._call(format), lambda t: W_SCALE["torch"].call(t, scale, zp, W_SCALE_GROUP, format)],
            [lambda: common.fresh(shape, dtype), lambda: common.torch_copy(shape, dtype)], repeat=3)
        return t_torch / t_nb

    track_speedup_vs_torch.unit = "x"

    def track_ratio_to_floor(self, shape, dtype, format):
        t_nb, t_floor = common.interleaved_medians([self._call(format), common.floor_pass],
                                            [lambda: common.fresh(shape, dtype)] * 2, repeat=5)
        return t_nb / t_floor

    track_ratio_to_floor.unit = "x floor"


class WScaleIntVectorizedTorch:
    """The integer quant_weight_w_scale against its formula as one reshaped torch
    expression (the reference loops over groups in Python; this is the stronger baseline)."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"])
    param_names = ["shape", "dtype"]
    timeout = 900

    def setup(self, shape, dtype):
        self.bench = WScale()
        self.bench.setup(shape, dtype, "int")

    def track_speedup_vs_torch_vectorized(self, shape, dtype):
        scale, zp = self.bench._torch_params()
        t_nb, t_torch = common.interleaved_medians(
            [self.bench._call("int"), lambda t: W_SCALE["torch-vectorized"].call(t, scale, zp, W_SCALE_GROUP)],
            [lambda: common.fresh(shape, dtype), lambda: common.torch_copy(shape, dtype)], repeat=5)
        return t_torch / t_nb

    track_speedup_vs_torch_vectorized.unit = "x"


class DoubleQuant:
    """quant_tensor(double_quant=True) with its defaults, int asym 4-bit, g128."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"], [False, True])
    param_names = ["shape", "dtype", "return_int"]
    timeout = 900

    def setup(self, shape, dtype, return_int):
        common.warm_up_codebook()
        self.w = common.fresh(shape, dtype)

    def _call(self, return_int):
        return lambda w: nbwoq.quant_tensor(w, group_size=DQ_GROUP, double_quant=True, return_int=return_int)

    def time_double_quant(self, shape, dtype, return_int):
        self._call(return_int)(self.w)

    def _times(self, shape, dtype, return_int, repeat=5):
        return common.interleaved_medians(
            [self._call(return_int), common.floor_pass, lambda t: DOUBLE_QUANT["torch"].call(t, DQ_GROUP)],
            [lambda: common.fresh(shape, dtype)] * 2 + [lambda: common.torch_copy(shape, dtype)], repeat)

    def track_speedup_vs_torch(self, shape, dtype, return_int):
        t_nb, _, t_torch = self._times(shape, dtype, return_int, repeat=3)
        return t_torch / t_nb

    track_speedup_vs_torch.unit = "x"

    def track_ratio_to_floor(self, shape, dtype, return_int):
        t_nb, t_floor, _ = self._times(shape, dtype, return_int)
        return t_nb / t_floor

    track_ratio_to_floor.unit = "x floor"


_PEAK_BODY = """
    import numpy as np
    import nbwoq
    shape, dtype, case = ARGS
    if dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16

    def call(w):
        if case == "w_scale_int":
            return nbwoq.quant_weight_w_scale(w, scale, zp, 128)
        if case == "w_scale_nf4":
            return nbwoq.quant_weight_w_scale(w, scale, None, 128, "nf4")
        return nbwoq.quant_tensor(w, **kwargs)

    kwargs = {"nf4_g64": dict(group_size=64, dtype="nf4"),
              "nf4_g64_codes": dict(group_size=64, dtype="nf4", return_int=True),
              "double_quant_g128": dict(group_size=128, double_quant=True)}.get(case)
    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(dtype)
    scale = zp = None
    if case.startswith("w_scale"):
        _, scale, zp = nbwoq.quant_tensor(w.copy(), group_size=128, dtype=case[8:], return_int=True)
    call(w.copy())                                      # load the kernels
    before = reset_peak()
    result = call(w)
    assert (result[0] if isinstance(result, tuple) else result) is w
    report(before, w.nbytes)
"""


def extra_peak_percent(shape, dtype, case):
    """Peak RSS one call adds, in % of the weight (fresh process, warm cache)."""
    return common.extra_peak_percent_of(_PEAK_BODY, [shape, dtype, case])


class CodebookMemory:
    params = (["float32", "bfloat16"], ["nf4_g64", "nf4_g64_codes", "w_scale_int", "w_scale_nf4",
                                        "double_quant_g128"])
    param_names = ["dtype", "case"]
    timeout = 300

    def track_extra_peak_percent_4096x4096(self, dtype, case):
        return extra_peak_percent([4096, 4096], dtype, case)

    track_extra_peak_percent_4096x4096.unit = "% of weight"


if __name__ == "__main__":
    import time

    common.warm_up_codebook()
    shape = sys.argv[1] if len(sys.argv) > 1 else "4096x4096"
    dtypes = sys.argv[2:] or ["float32"]
    print(f"{shape}, medians of interleaved calls (torch: 3, others: 5)")
    print(f"{'case':>28} {'dtype':>8} {'nbwoq ms':>9} {'floor ms':>9} {'torch ms':>9} {'x floor':>8} {'x faster':>9}")

    def row(name, dtype, t_nb, t_floor, t_torch):
        print(f"{name:>28} {dtype:>8} {t_nb*1e3:9.2f} {t_floor*1e3:9.2f} {t_torch*1e3:9.1f} "
              f"{t_nb/t_floor:8.2f} {t_torch/t_nb:9.1f}")

    for dtype in dtypes:
        fresh = [lambda: common.fresh(shape, dtype)]
        for codebook in ("nf4", "fp4"):
            for return_int in (False, True):
                b = Codebook()
                t_nb, t_floor = common.interleaved_medians([b._call(codebook, return_int), common.floor_pass],
                                                           fresh * 2, 5)
                kw = dict(group_size=CODEBOOK_GROUP, dtype=codebook, return_int=return_int)
                (t_torch,) = common.interleaved_medians([lambda t: CODEBOOK["torch"].call(t, **kw)],
                                                        [lambda: common.torch_copy(shape, dtype)], 3)
                row(f"{codebook} g64 {'codes' if return_int else 'fake-quant'}", dtype, t_nb, t_floor, t_torch)
        for fmt in ("int", "nf4"):
            b = WScale()
            b.setup(shape, dtype, fmt)
            scale, zp = b._torch_params()
            t_nb, t_floor = common.interleaved_medians([b._call(fmt), common.floor_pass], fresh * 2, 5)
            (t_torch,) = common.interleaved_medians(
                [lambda t: W_SCALE["torch"].call(t, scale, zp, W_SCALE_GROUP, fmt)],
                [lambda: common.torch_copy(shape, dtype)], 3)
            row(f"w_scale {fmt} g128 (torch loop)", dtype, t_nb, t_floor, t_torch)
            if fmt == "int":
                (t_vec,) = common.interleaved_medians(
                    [lambda t: W_SCALE["torch-vectorized"].call(t, scale, zp, W_SCALE_GROUP)],
                    [lambda: common.torch_copy(shape, dtype)], 5)
                row("w_scale int g128 (torch vec)", dtype, t_nb, t_floor, t_vec)
        for return_int in (False, True):
            b = DoubleQuant()
            t_nb, t_floor = common.interleaved_medians([b._call(return_int), common.floor_pass], fresh * 2, 5)
            (t_torch,) = common.interleaved_medians([lambda t: DOUBLE_QUANT["torch"].call(t, DQ_GROUP)],
                                             [lambda: common.torch_copy(shape, dtype)], 3)
            row(f"double quant g128 {'codes' if return_int else 'fake'}", dtype, t_nb, t_floor, t_torch)
    if shape == "4096x4096":
        for dtype in dtypes:
            for case in CodebookMemory.params[1]:
                print(f"extra peak memory {dtype} {case}: {extra_peak_percent([4096, 4096], dtype, case):.2f}% "
                      "of weight")
