"""GGML block encoders (llama.cpp's data-free ``quantize_row_*_ref``, byte for byte):
``encode_rows`` of a seeded 4096x4096 float32 weight per block type.

``time_encode`` is the whole call (the encoder, then the decode that reports the error);
``track_mparams_per_s`` is its throughput in millions of values per second.

Run ``python asv_bench/benchmarks/bench_ggml.py [TYPE ...]`` for a quick table.
"""

import sys
import time

try:
    from . import common
except ImportError:  # run as a script
    import common

import numpy as np

from nbwoq.formats import ggml_blocks

TYPES = ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "IQ4_NL"]


def _warm(type_name):
    ggml_blocks.encode_rows(np.ones((1, ggml_blocks.BLOCK_TYPES[type_name].block_values), np.float32), type_name)


class GGMLEncode:
    params = (["4096x4096"], TYPES)
    param_names = ["shape", "type"]
    timeout = 600

    def setup(self, shape, type_name):
        _warm(type_name)
        self.w = common.weight(shape)

    def time_encode(self, shape, type_name):
        ggml_blocks.encode_rows(self.w, type_name, return_error=True)

    def track_mparams_per_s(self, shape, type_name):
        seconds = common.median_time(lambda w: ggml_blocks.encode_rows(w, type_name, return_error=True),
                                     lambda: self.w, repeat=3)
        return self.w.size / seconds / 1e6

    track_mparams_per_s.unit = "M values/s"


if __name__ == "__main__":
    w = common.weight("4096x4096")
    for name in sys.argv[1:] or TYPES:
        _warm(name)
        t0 = time.perf_counter()
        ggml_blocks.encode_rows(w, name, return_error=True)
        print(f"{name:7s} {w.size / (time.perf_counter() - t0) / 1e6:8.1f} M values/s")
