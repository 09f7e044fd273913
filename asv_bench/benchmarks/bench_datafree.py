"""Data-free refits (``refit_int``, ``refine_zero``, ``dual_scale``) against round to nearest.

Issue 15 caps a default data-free method at 3x round-to-nearest's time. ``track_*``
times each method and ``quant_tensor`` (the same weight, the same setting) inside one
call, so the ratio compares like with like on a shared machine.

Run ``python asv_bench/benchmarks/bench_datafree.py`` for a quick table.
"""

import numpy as np

try:
    from . import common
except ImportError:  # run as a script
    import common

import nbwoq
from implementations import IMPLEMENTATIONS

QUANT = IMPLEMENTATIONS["quant_tensor"]["kernel"]
METHODS = {
    "refit_int": lambda w: IMPLEMENTATIONS["refit_int"]["kernel"].call(w, bits=4, group_size=128),
    "refine_zero": lambda w: IMPLEMENTATIONS["refine_zero"]["kernel"].call(w, bits=4, group_size=128),
    # dual_scale writes nothing: the search over column scales of one tensor
    "dual_scale": lambda w: nbwoq.dual_scale([w], bits=4, group_size=128),
}
#: LLM-scale weights (std 0.02): refine_zero's lp power step runs only past HQQ's threshold
SCALE = 0.02


def _fresh(shape):
    rows, cols = (int(n) for n in shape.split("x"))
    return common.fresh((rows, cols), "float32") * np.float32(SCALE)


class DataFree:
    params = (["2048x2048", "4096x4096"], list(METHODS))
    param_names = ["shape", "method"]
    timeout = 900

    def setup(self, shape, method):
        common.warm_up()
        METHODS[method](_fresh("64x256"))  # compile outside the timing
        self.w = _fresh(shape)

    def time_method(self, shape, method):
        METHODS[method](self.w)

    def track_ratio_to_rtn(self, shape, method, repeat=3):
        t_method = common.median_time(METHODS[method], lambda: _fresh(shape), repeat)
        t_rtn = common.median_time(lambda w: QUANT.call(w, bits=4, group_size=128), lambda: _fresh(shape), repeat)
        return t_method / t_rtn

    track_ratio_to_rtn.unit = "x"


if __name__ == "__main__":
    bench = DataFree()
    for shape in DataFree.params[0]:
        for method in METHODS:
            bench.setup(shape, method)
            print(f"{shape:>10} {method:<12} {bench.track_ratio_to_rtn(shape, method):6.1f}x round-to-nearest's time")
