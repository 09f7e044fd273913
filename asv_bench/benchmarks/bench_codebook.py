"""4-bit codebooks, quantization with known scales, double quantization: nbwoq vs the
plain-torch formula vs the memory floor.

``time_*`` is nbwoq alone. The ``track_*`` ratios time nbwoq, the plain-torch
implementation of the reference's formula and an in-place ``w *= 1.0`` pass inside the
same call, the calls taking turns (``bench_torch.interleaved_medians``) so that machine
load falls on all of them alike. ``track_extra_peak_percent`` measures, in a fresh
process, the peak resident memory a call adds beyond the weight (outputs such as the
returned scales included), as a percentage of the weight's size.

The plain-torch references are the reference library's formulas in torch:

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

import numpy as np

try:
    from . import common
    from .bench_torch import interleaved_medians
except ImportError:  # run as a script
    import common
    from bench_torch import interleaved_medians

import nbwoq

CODEBOOK_GROUP = 64
W_SCALE_GROUP = 128
DQ_GROUP = 128


# --- plain-torch references -------------------------------------------------------------


def _torch_codebook_groups(x, scale, dtype, return_int):
    """The reference's codebook loop on ``x`` (groups in rows) with ``scale`` (rows, 1)."""
    torch = common.torch_or_none()
    levels = nbwoq.FLOAT_MAPPING[dtype]
    values = nbwoq.INT_MAPPING[dtype] if return_int else levels
    mids = [(levels[i] + levels[i + 1]) / 2 for i in range(len(levels) - 1)]
    x.div_(scale)
    q = torch.zeros_like(x)
    last = len(levels) - 1
    for i, v in enumerate(values):
        if i == 0:
            q += torch.where(x <= mids[0], v, 0)
        elif i == last:
            q += torch.where(x > mids[-1], v, 0)
        else:
            q += torch.where((mids[i - 1] < x) & (x <= mids[i]), v, 0)
    x.copy_(q)
    if not return_int:
        x.mul_(scale)
    return x


def torch_quantize_codebook(w, dtype, group_size, return_int):
    """quant_tensor with a codebook, the reference's formula in plain torch (in place)."""
    x = w.reshape(-1, group_size)
    scale = (x.abs().max(1)[0] * 1.0 / max(nbwoq.FLOAT_MAPPING[dtype])).unsqueeze(1)
    _torch_codebook_groups(x, scale, dtype, return_int)
    return w


def torch_w_scale(w, scale, zp, group_size, dtype):
    """quant_weight_w_scale as the reference runs it: a Python loop over the groups."""
    torch = common.torch_or_none()
    out = torch.zeros(w.shape, dtype=w.dtype)
    for i in range(w.shape[1] // group_size):
        cols = slice(i * group_size, (i + 1) * group_size)
        if dtype in nbwoq.FLOAT_MAPPING:
            out[:, cols] = _torch_codebook_groups(w[:, cols], scale[:, i: i + 1], dtype, return_int=True)
        else:
            part = w[:, cols].div_(scale[:, i: i + 1])
            if zp is not None:
                part.add_(zp[:, i: i + 1])
            out[:, cols].copy_(part.round_())
    return out


def torch_w_scale_vectorized(w, scale, zp, group_size):
    """The integer quant_weight_w_scale formula as one reshaped torch expression."""
    x = w.reshape(-1, group_size)
    x.div_(scale.reshape(-1, 1))
    if zp is not None:
        x.add_(zp.reshape(-1, 1))
    x.round_()
    return w


def _torch_int_fake(x, bits, scheme):
    """Integer quantization of the rows of ``x`` in place: asym leaves the codes (the
    caller dequantizes with its own scales), sym stores ``code * scale``."""
    scale, zp = common.torch_int_codes(x, bits, scheme)
    if zp is None:
        x.mul_(scale)
    return scale, zp


def torch_double_quant(w, group_size):
    """quant_tensor(double_quant=True) with its defaults, the mean added back."""
    x = w.reshape(-1, group_size)
    scale, zp = _torch_int_fake(x, 4, "asym")
    flat = scale.reshape(1, -1)
    mean = flat.mean()
    flat.sub_(mean)
    n = flat.shape[1] // 256 * 256
    _torch_int_fake(flat[:, :n].reshape(-1, 256), 8, "sym")
    if n < flat.shape[1]:
        _torch_int_fake(flat[:, n:], 8, "sym")
    flat.add_(mean)
    x.sub_(zp).mul_(scale)
    return w


def torch_copy(shape, dtype):
    torch = common.torch_or_none()
    w = common.weight(shape, dtype)
    if dtype == "bfloat16":
        return torch.from_numpy(w.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(w.copy())


def warm_up():
    """Compile (or load from cache) every codebook, given-scale and double-quant kernel."""
    common.warm_up()
    for dtype in ("float32", "bfloat16"):
        w = np.random.default_rng(0).standard_normal((8, 256)).astype(common.DTYPES[dtype])
        for name in ("nf4", "fp4"):
            for return_int in (False, True):
                nbwoq.quant_tensor(w.copy(), group_size=64, dtype=name, return_int=return_int)
        _, s, z = nbwoq.quant_tensor(w.copy(), group_size=128, return_int=True)
        nbwoq.quant_weight_w_scale(w.copy(), s, z, group_size=128)
        _, s, _ = nbwoq.quant_tensor(w.copy(), group_size=128, dtype="nf4", return_int=True)
        nbwoq.quant_weight_w_scale(w.copy(), s, group_size=128, dtype="nf4")
        for return_int in (False, True):
            nbwoq.quant_tensor(w.copy(), group_size=128, double_quant=True, return_int=return_int)


# --- benchmarks ----------------------------------------------------------------------------


class Codebook:
    """quant_tensor with nf4/fp4, groups of 64: fake quantization and codes."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"], ["nf4", "fp4"], [False, True])
    param_names = ["shape", "dtype", "codebook", "return_int"]
    timeout = 900

    def setup(self, shape, dtype, codebook, return_int):
        warm_up()
        self.w = common.fresh(shape, dtype)

    def _call(self, codebook, return_int):
        return lambda w: nbwoq.quant_tensor(w, group_size=CODEBOOK_GROUP, dtype=codebook, return_int=return_int)

    def time_quant_tensor(self, shape, dtype, codebook, return_int):
        self._call(codebook, return_int)(self.w)

    def _times(self, shape, dtype, codebook, return_int, repeat=5):
        return interleaved_medians(
            [self._call(codebook, return_int), common.floor_pass,
             lambda t: torch_quantize_codebook(t, codebook, CODEBOOK_GROUP, return_int)],
            [lambda: common.fresh(shape, dtype)] * 2 + [lambda: torch_copy(shape, dtype)], repeat)

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
        warm_up()
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
        t_nb, t_torch = interleaved_medians(
            [self._call(format), lambda t: torch_w_scale(t, scale, zp, W_SCALE_GROUP, format)],
            [lambda: common.fresh(shape, dtype), lambda: torch_copy(shape, dtype)], repeat=3)
        return t_torch / t_nb

    track_speedup_vs_torch.unit = "x"

    def track_ratio_to_floor(self, shape, dtype, format):
        t_nb, t_floor = interleaved_medians([self._call(format), common.floor_pass],
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
        t_nb, t_torch = interleaved_medians(
            [self.bench._call("int"), lambda t: torch_w_scale_vectorized(t, scale, zp, W_SCALE_GROUP)],
            [lambda: common.fresh(shape, dtype), lambda: torch_copy(shape, dtype)], repeat=5)
        return t_torch / t_nb

    track_speedup_vs_torch_vectorized.unit = "x"


class DoubleQuant:
    """quant_tensor(double_quant=True) with its defaults, int asym 4-bit, g128."""

    params = (["4096x4096", "11008x4096"], ["float32", "bfloat16"], [False, True])
    param_names = ["shape", "dtype", "return_int"]
    timeout = 900

    def setup(self, shape, dtype, return_int):
        warm_up()
        self.w = common.fresh(shape, dtype)

    def _call(self, return_int):
        return lambda w: nbwoq.quant_tensor(w, group_size=DQ_GROUP, double_quant=True, return_int=return_int)

    def time_double_quant(self, shape, dtype, return_int):
        self._call(return_int)(self.w)

    def _times(self, shape, dtype, return_int, repeat=5):
        return interleaved_medians(
            [self._call(return_int), common.floor_pass, lambda t: torch_double_quant(t, DQ_GROUP)],
            [lambda: common.fresh(shape, dtype)] * 2 + [lambda: torch_copy(shape, dtype)], repeat)

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

    warm_up()
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
                t_nb, t_floor = interleaved_medians([b._call(codebook, return_int), common.floor_pass], fresh * 2, 5)
                (t_torch,) = interleaved_medians(
                    [lambda t: torch_quantize_codebook(t, codebook, CODEBOOK_GROUP, return_int)],
                    [lambda: torch_copy(shape, dtype)], 3)
                row(f"{codebook} g64 {'codes' if return_int else 'fake-quant'}", dtype, t_nb, t_floor, t_torch)
        for fmt in ("int", "nf4"):
            b = WScale()
            b.setup(shape, dtype, fmt)
            scale, zp = b._torch_params()
            t_nb, t_floor = interleaved_medians([b._call(fmt), common.floor_pass], fresh * 2, 5)
            (t_torch,) = interleaved_medians([lambda t: torch_w_scale(t, scale, zp, W_SCALE_GROUP, fmt)],
                                             [lambda: torch_copy(shape, dtype)], 3)
            row(f"w_scale {fmt} g128 (torch loop)", dtype, t_nb, t_floor, t_torch)
            if fmt == "int":
                (t_vec,) = interleaved_medians([lambda t: torch_w_scale_vectorized(t, scale, zp, W_SCALE_GROUP)],
                                               [lambda: torch_copy(shape, dtype)], 5)
                row("w_scale int g128 (torch vec)", dtype, t_nb, t_floor, t_vec)
        for return_int in (False, True):
            b = DoubleQuant()
            t_nb, t_floor = interleaved_medians([b._call(return_int), common.floor_pass], fresh * 2, 5)
            (t_torch,) = interleaved_medians([lambda t: torch_double_quant(t, DQ_GROUP)],
                                             [lambda: torch_copy(shape, dtype)], 3)
            row(f"double quant g128 {'codes' if return_int else 'fake'}", dtype, t_nb, t_floor, t_torch)
    if shape == "4096x4096":
        for dtype in dtypes:
            for case in CodebookMemory.params[1]:
                print(f"extra peak memory {dtype} {case}: {extra_peak_percent([4096, 4096], dtype, case):.2f}% "
                      "of weight")
