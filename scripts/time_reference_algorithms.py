"""Time the reference's own weight-only algorithms as installed and with nbwoq substituted.

Usage (needs ``pip install -e ".[clients]"``)::

    python scripts/time_reference_algorithms.py [--layers 4] [--hidden 1024] [--repeat 1]

A Llama of ``--layers`` layers and hidden size ``--hidden`` (random weights, fixed seed,
built offline) is quantized by the reference's ``prepare``/``convert`` for each algorithm,
once as installed and once inside ``nbwoq_torch.patch_reference()``; the best wall time of
``--repeat`` runs each way is printed with the speed-up, and whether the quantized models
are identical. "in utility" is the part of that time spent inside the utility module's
seed functions (outermost calls only), which is what nbwoq replaces; the rest (packing,
calibration forward passes, GPTQ's Hessian work) is the reference's own code either way.
"awq-auto" runs nbwoq with ``patch_reference(absorb_backend="auto")``: on transformers 5.x
it finds the absorb pairs the reference cannot (plain "awq", like the reference, finds
none), so it does different work and its model is not the reference's.
"""

import argparse
import contextlib
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

import nbwoq_torch  # noqa: E402

ALGORITHMS = ("rtn", "rtn-clip", "rtn-nf4", "rtn-double-quant", "gptq", "teq", "awq", "awq-auto")


@contextlib.contextmanager
def _utility_clock(totals):
    """Add the wall time of outermost calls to the utility module's seed functions to
    ``totals[0]``, wherever the reference's modules hold them."""
    from nbwoq_torch._patch import _SUBSTITUTES, REFERENCE_MODULE

    import importlib

    for name in ("rtn", "awq", "teq", "gptq", "modules"):  # their module-level imports first
        importlib.import_module(f"neural_compressor.torch.algorithms.weight_only.{name}")
    utility = importlib.import_module(REFERENCE_MODULE)  # the reference's, or the substitute
    targets = {id(getattr(utility, name)) for name in _SUBSTITUTES if name != "GraphTrace"}
    depth = [0]

    def clocked(function):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals[0] += time.perf_counter() - start

        return wrapper

    undo = []
    wrapped = {}
    for name, module in list(sys.modules.items()):
        if not (name == "neural_compressor" or name.startswith("neural_compressor.")):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in targets:
                wrapped.setdefault(id(value), clocked(value))
                undo.append((module, attr, value))
                setattr(module, attr, wrapped[id(value)])
    try:
        yield
    finally:
        for module, attr, value in reversed(undo):
            setattr(module, attr, value)


def _timed(model, algorithm, substitute, repeat):
    name, absorb_backend = algorithm, "torchscript"
    if algorithm == "awq-auto":
        name, absorb_backend = "awq", "auto"
    best, in_utility, state = float("inf"), float("inf"), None
    for _ in range(repeat):
        totals = [0.0]
        with contextlib.ExitStack() as stack:
            if substitute:
                stack.enter_context(nbwoq_torch.patch_reference(absorb_backend=absorb_backend))
            stack.enter_context(_utility_clock(totals))
            start = time.perf_counter()
            # substitute=False: the substitution (if any) is already in place, held open here.
            quantized = _runs.quantize(model, name, "llama", False)
            elapsed = time.perf_counter() - start
        best, in_utility = min(best, elapsed), min(in_utility, totals[0])
        state = _runs.quantized_state(quantized)
    return best, in_utility, state


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
    print(f"{'algorithm':<16}{'total: reference':>17}{'nbwoq':>8}{'speed-up':>9}"
          f"{'in utility: reference':>23}{'nbwoq':>8}{'speed-up':>9}  identical")
    tiny = _runs.build_model("llama", hidden=64, layers=1, vocab=1000)
    for algorithm in args.algorithms:
        for substitute in (False, True):  # warm-up: imports, first-call and JIT costs
            _timed(tiny, algorithm, substitute, 1)
        ref_time, ref_utility, ref_state = _timed(model, algorithm, False, args.repeat)
        our_time, our_utility, our_state = _timed(model, algorithm, True, args.repeat)
        same = ref_state.keys() == our_state.keys() and not _runs.differing(ref_state, our_state)
        ratio = ref_utility / our_utility if our_utility else float("nan")
        print(f"{algorithm:<16}{ref_time:>16.2f}s{our_time:>7.2f}s{ref_time / our_time:>8.2f}x"
              f"{ref_utility:>22.2f}s{our_utility:>7.2f}s{ratio:>8.2f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
