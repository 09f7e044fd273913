"""Drive every Numba kernel through the public API with random shapes, strides and
arguments; run by ``test_boundscheck.py`` in a subprocess with ``NUMBA_BOUNDSCHECK=1``
(and a cache directory of its own), where an out-of-bounds index raises instead of
reading or writing stray memory.

Usage: ``python boundscheck_driver.py EXAMPLES_PER_TARGET``. Exit status 0 when every
call returned a valid result or refused properly, 1 otherwise; 2 when bounds checking
is not actually on (so the test cannot pass vacuously).
"""

import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz import core, files, strategies  # noqa: E402
import nbwoq  # noqa: E402
from nbwoq.formats import packing  # noqa: E402

# Each array layout Numba types differently is its own compiled code, and indexing is
# what bounds checks guard: contiguous (C) and strided (A: positive and negative
# strides; Fortran order indexes like A) are driven. The dtype only changes how an
# element is decoded, not where it is read, so float32 alone keeps the compiles few
# (the CLI round trips below run the 16-bit decoding kernels on bfloat16 sources).
LAYOUTS = ("C", "C", "cols-strided", "reversed", "rows-strided")
DTYPES = ("float32",)


def bounds_checking_is_on():
    """An index one past a row inside a parallel kernel must raise (IndexError, which
    Numba's parallel regions surface as SystemError)."""
    try:
        packing.unpack_rows(np.zeros((2, 1), np.uint8), np.ones((2, 1), np.float32), np.zeros((2, 1), np.float32),
                             64, np.float32(0), 4, np.zeros(1, np.float32), False, np.empty((2, 64), np.float32))
    except (IndexError, SystemError):
        return True
    return False


def fuzz(examples):
    failures = []
    for name, make in sorted(strategies.CASES.items()):
        strategy = make(weight_strategy=strategies.weights(layouts=LAYOUTS, dtypes=DTYPES))

        # derandomized: the same cases (and so the same compiled signatures) every run
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def body(case):
            try:
                core.check_core_case(case)
            except core.FuzzFailure as exc:
                failures.append(f"{name}: {exc}")

        body()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(files.load_cases())
    def corrupt_files(case):
        try:
            files.check_load_case(case)
        except core.FuzzFailure as exc:
            failures.append(f"load: {exc}")

    corrupt_files()
    return failures


def cli_round_trips():
    """Every packer and unpacker: the CLI on a tiny checkpoint in each format, read back."""
    from nbwoq.command.demo_model import write_checkpoint
    from nbwoq.command.cli import main

    failures = []
    tmp = tempfile.mkdtemp(prefix="nbwoq-bc-")
    tiny = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=64)
    src = write_checkpoint(os.path.join(tmp, "src"), **tiny)
    runs = [("nbwoq", ["--bits", "3", "--group-size", "24"]), ("nbwoq", ["--dtype", "nf4", "--group-size", "-1"]),
            ("nbwoq", ["--bits", "16", "--scheme", "sym", "--clip", "group"]), ("gptq", ["--bits", "4"]),
            ("gguf", []), ("gguf", ["--bits", "8"])]
    for k, (fmt, extra) in enumerate(runs):
        out = os.path.join(tmp, f"out{k}" + (".gguf" if fmt == "gguf" else ""))
        try:
            code = main(["quantize", src, out, "--format", fmt, "--quiet"] + extra)
            if code != 0:
                failures.append(f"cli {fmt} {extra}: exit {code}")
            elif fmt == "nbwoq":
                for value in nbwoq.dequantize(nbwoq.load(out)).values():
                    assert np.all(np.isfinite(value))
        except BaseException as exc:  # noqa: BLE001 - anything from a kernel is a failure here
            failures.append(f"cli {fmt} {extra}: {type(exc).__name__}: {exc}")
    return failures


def main():
    if not numba.config.BOUNDSCHECK or not bounds_checking_is_on():
        print("bounds checking is not on (NUMBA_BOUNDSCHECK=1 expected)")
        return 2
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    failures = fuzz(examples) + cli_round_trips()
    for f in failures:
        print("FAILURE", f)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
