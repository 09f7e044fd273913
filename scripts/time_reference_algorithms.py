"""Time the reference's own weight-only algorithms as installed and with nbwoq substituted.

Usage (needs ``pip install -e ".[clients]"``)::

    python scripts/time_reference_algorithms.py [--layers 4] [--hidden 1024] [--repeat 1]

A Llama of ``--layers`` layers and hidden size ``--hidden`` (random weights, fixed seed,
built offline) is quantized by the reference's ``prepare``/``convert`` for each algorithm,
once as installed and once inside ``nbwoq_torch.patch_reference()``; the best wall time of
``--repeat`` runs each way is printed with the speed-up, and whether the quantized models
are identical. "awq-same-path" holds nbwoq's absorb search to TorchScript, the reference's
path (on transformers 5.x the reference finds no absorb pairs; plain "awq" on nbwoq finds
them and so does different, more useful work).
"""

import argparse
import functools
import logging
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "clients")]

import torch  # noqa: E402

import _runs  # noqa: E402

ALGORITHMS = ("rtn", "rtn-clip", "rtn-nf4", "rtn-double-quant", "gptq", "teq", "awq-same-path", "awq")


def _timed(model, algorithm, substitute, repeat):
    name, patches = algorithm, ()
    if algorithm == "awq-same-path":
        name = "awq"
        patches = _runs.torchscript_only() if substitute else ()
    best, state = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        quantized = _runs.quantize(model, name, "llama", substitute, patches=patches)
        best = min(best, time.perf_counter() - start)
        state = _runs.quantized_state(quantized)
    return best, state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    import warnings

    warnings.simplefilter("ignore")
    os.chdir(tempfile.mkdtemp(prefix="nbwoq_reference_timing_"))  # the reference writes ./nc_workspace
    model = _runs.build_model("llama", hidden=args.hidden, layers=args.layers, vocab=1000,
                              intermediate=args.hidden * 11 // 4 // 32 * 32)
    print(f"Llama: {args.layers} layers, hidden {args.hidden}, intermediate {model.config.intermediate_size}; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(f"{'algorithm':<18}{'reference s':>12}{'nbwoq s':>10}{'speed-up':>10}  identical")
    for algorithm in args.algorithms:
        ref_time, ref_state = _timed(model, algorithm, False, args.repeat)
        our_time, our_state = _timed(model, algorithm, True, args.repeat)
        same = ref_state.keys() == our_state.keys() and not _runs.differing(ref_state, our_state)
        print(f"{algorithm:<18}{ref_time:>12.2f}{our_time:>10.2f}{ref_time / our_time:>9.2f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
