"""Clip-ratio search: nbwoq's one-pass search vs the plain-torch 40-pass search.

The reference tries ``1 - i / 200`` (``i < 40``) by fake-quantizing the whole weight once
per ratio. ``common.torch_search_clip`` is that method in plain torch (one quantize pass and
one loss per ratio, the formula of the reference's ``quant_tensor``); per group it keeps
each group's best ratio instead of the tensor's. ``time_*`` is nbwoq alone; the
``track_*`` ratios time nbwoq, the torch search and the ``w *= 1.0`` memory floor inside
the same call, so machine load cancels out. ``track_extra_peak_percent_*`` measures in a
fresh process the peak resident memory a search adds beyond the weight, as a percentage
of the weight's size.

Run ``python asv_bench/benchmarks/bench_clip.py`` for a quick table of the targets.
"""

import sys

import numpy as np

try:
    from . import common
except ImportError:  # run as a script
    import common

import nbwoq
from implementations import IMPLEMENTATIONS

CLIP = IMPLEMENTATIONS["search_clip"]  # kernel, reference, naive, torch (the 40-pass search)

#: config name -> search_clip keyword arguments.
CONFIGS = {
    "int4-asym-g128": dict(bits=4, group_size=128, scheme="asym", dtype="int"),
    "nf4-g64": dict(bits=4, group_size=64, scheme="asym", dtype="nf4"),
}
#: mode name -> search_clip keyword arguments beyond the config's.
MODES = {"per-tensor": dict(per_group=False), "per-group": dict(per_group=True),
         "per-group-magnitude": dict(per_group=True, weighting="magnitude")}


def speedup_vs_torch(w, shape, config, mode):
    """``(nbwoq s, torch s, ratio)``: medians, nbwoq timed three times after every torch
    run so that both sample the same stretch of machine load. The torch search takes
    seconds to tens of seconds: fewer rounds on the big shape."""
    kw = dict(CONFIGS[config], **MODES[mode])
    t_nb, t_torch = [], []
    for _ in range(3 if shape == "4096x4096" else 1):
        t_torch.append(common.median_time(lambda t: CLIP["torch"].call(t, **kw),
                                          lambda: common.torch_copy(shape, "float32"), 1))
        for _ in range(3):
            t_nb.append(common.median_time(lambda _: CLIP["kernel"].call(w, **kw), lambda: None, 1))
    a, b = float(np.median(t_nb)), float(np.median(t_torch))
    return a, b, b / a


class SearchClip:
    params = (list(common.SHAPES), list(CONFIGS), list(MODES))
    param_names = ["shape", "config", "mode"]
    timeout = 1800

    def setup(self, shape, config, mode):
        common.warm_up_clip()
        self.w = common.weight(shape, "float32")  # read-only: the search never writes

    def time_search_clip(self, shape, config, mode):
        nbwoq.search_clip(self.w, **MODES[mode], **CONFIGS[config])

    def _time_nbwoq(self, shape, config, mode, repeat=5):
        w = self.w
        return common.median_time(lambda _: nbwoq.search_clip(w, **MODES[mode], **CONFIGS[config]),
                                  lambda: None, repeat)

    def track_speedup_vs_torch_40_pass(self, shape, config, mode):
        return speedup_vs_torch(self.w, shape, config, mode)[2]

    track_speedup_vs_torch_40_pass.unit = "x"

    def track_ratio_to_floor(self, shape, config, mode):
        t_nb = self._time_nbwoq(shape, config, mode)
        t_floor = common.median_time(common.floor_pass, lambda: common.fresh(shape, "float32"), 5)
        return t_nb / t_floor

    track_ratio_to_floor.unit = "x floor"


class SearchClipPerGroupCost:
    """Per-group search time over per-tensor search time, measured side by side."""

    params = (list(common.SHAPES), list(CONFIGS))
    param_names = ["shape", "config"]
    timeout = 600

    def setup(self, shape, config):
        common.warm_up_clip()
        self.w = common.weight(shape, "float32")

    def track_per_group_over_per_tensor(self, shape, config):
        w, kw = self.w, CONFIGS[config]
        times = {False: [], True: []}
        for _ in range(5):  # interleaved, so a load change hits both alike
            for per_group in (False, True):
                times[per_group].append(common.median_time(
                    lambda _: nbwoq.search_clip(w, per_group=per_group, **kw), lambda: None, 1))
        return float(np.median(times[True]) / np.median(times[False]))

    track_per_group_over_per_tensor.unit = "x"


_PEAK_BODY = """
    import numpy as np
    import nbwoq

    shape, kwargs = ARGS
    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    w.setflags(write=False)
    small = w[:8].copy()
    small.setflags(write=False)
    nbwoq.search_clip(small, **kwargs)  # compile / load the cache, start the threads
    before = reset_peak()
    nbwoq.search_clip(w, **kwargs)
    report(before, w.nbytes)
"""


def extra_peak_percent(shape, **kwargs):
    """Peak RSS a search adds, in % of the weight (fresh process, warm cache)."""
    return common.extra_peak_percent_of(_PEAK_BODY, [shape, kwargs])


class SearchClipMemory:
    params = (list(CONFIGS), list(MODES))
    param_names = ["config", "mode"]
    timeout = 300

    def track_extra_peak_percent_4096x4096(self, config, mode):
        return extra_peak_percent([4096, 4096], **MODES[mode], **CONFIGS[config])

    track_extra_peak_percent_4096x4096.unit = "% of weight"


if __name__ == "__main__":
    common.warm_up_clip()
    shape = sys.argv[1] if len(sys.argv) > 1 else "4096x4096"
    print(f"{'shape':>11} {'config':>15} {'mode':>19} {'nbwoq ms':>9} {'torch ms':>9} {'x faster':>9} "
          f"{'floor ms':>9} {'x floor':>8} {'peak %':>7}")
    for config in CONFIGS:
        per_mode = {}
        for mode in MODES:
            bench = SearchClip()
            bench.setup(shape, config, mode)
            t_nb, t_torch, _ = speedup_vs_torch(bench.w, shape, config, mode)
            t_floor = common.median_time(common.floor_pass, lambda: common.fresh(shape, "float32"), 5)
            peak = extra_peak_percent(list(common.SHAPES[shape]), **MODES[mode], **CONFIGS[config])
            per_mode[mode] = t_nb
            print(f"{shape:>11} {config:>15} {mode:>19} {t_nb*1e3:9.1f} {t_torch*1e3:9.0f} {t_torch/t_nb:9.1f} "
                  f"{t_floor*1e3:9.2f} {t_nb/t_floor:8.1f} {peak:7.2f}")
        cost = SearchClipPerGroupCost()
        cost.setup(shape, config)
        print(f"{shape:>11} {config:>15} per-group / per-tensor (interleaved): "
              f"{cost.track_per_group_over_per_tensor(shape, config):.2f}x")
