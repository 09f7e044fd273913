"""Long fuzz run over every public function of nbwoq and nbwoq_torch.

The same targets as the short profile in ``tests/hardening`` (the ``fuzz`` package there holds them
and says what each case must do), run for many examples each. Failures do not stop the
run: each distinct one is counted and its first case printed (values come from a seed
in the case, so it replays). Like a benchmark, run it alone::

    flock /tmp/nbwoq-bench.lock python scripts/fuzz_long.py --examples 20000 --json fuzz.json

Exit status 1 when any target failed.
"""

import argparse
import collections
import json
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "hardening"))

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz import cli, core, files, modules, strategies, torch_face  # noqa: E402


def targets(with_torch):
    """``{name: (strategy, check)}`` of every fuzz target."""
    out = {f"nbwoq.{name}": (make(), core.check_core_case) for name, make in sorted(strategies.CASES.items())}
    out["nbwoq.load+dequantize"] = (files.load_cases(), files.check_load_case)
    out["nbwoq quantize (CLI)"] = (cli.cli_cases(), cli.check_cli)
    if with_torch:
        for name, make in sorted(torch_face.TORCH_CASES.items()):
            out[f"nbwoq_torch.{name}"] = (make(), torch_face.check_torch_case)
        for name, make in sorted(torch_face.TORCH_CASES.items()):
            out[f"nbwoq_torch.{name}[reference path]"] = (make(), torch_face.check_torch_reference_case)
        out["nbwoq_torch.get/set/fetch_module"] = (modules.dotted_names(), modules.check_lookup)
        out["nbwoq_torch.move_input_to_device"] = (
            st.tuples(modules.nested_inputs(), st.sampled_from(["cpu", "meta", "nope", 3, None])),
            lambda c: modules.check_move_input(*c))
        out["nbwoq_torch.get_example_input"] = (
            st.tuples(st.lists(modules.batches(), max_size=4), st.one_of(st.integers(-2, 6), st.sampled_from((1.0, None)))),
            lambda c: modules.check_example_input(*c))
        out["nbwoq_torch.get_absorb_layers"] = (modules.absorb_cases(), modules.check_absorb)
        out["nbwoq_torch.get_module_input_output"] = (modules.hook_cases(), modules.check_hooks)
    return out


def run_target(strategy, check, examples):
    outcomes = collections.Counter()
    failures = collections.Counter()
    first = {}

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def body(case):
        try:
            outcomes[check(case)] += 1
        except core.FuzzFailure as exc:
            key = str(exc).split("\n")[0][:200]
            failures[key] += 1
            first.setdefault(key, str(exc)[:3000])

    t0 = time.perf_counter()
    body()
    seconds = time.perf_counter() - t0
    return dict(examples=sum(outcomes.values()) + sum(failures.values()), outcomes=dict(outcomes),
                failures={k: dict(count=c, first=first[k]) for k, c in failures.items()}, seconds=seconds)


def concurrency(rounds, threads, processes):
    """Stress the concurrency test's jobs: ``rounds`` rounds of ``threads`` Python threads
    started together, then every job ``rounds`` times over a spawned process pool; every
    result compared with the serial one. Returns the figures."""
    import concurrent.futures
    import multiprocessing
    import threading

    import test_concurrency as tc

    shared = tc.sources()
    serial = {name: tc._as_numpy(func(shared[src])) for name, src, func in tc.JOBS}
    mismatches = collections.Counter()
    calls = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        barrier = threading.Barrier(threads)
        results = [None] * threads

        def worker(t, r=r, barrier=barrier, results=results):
            name, src, func = tc.JOBS[(r * 7 + t) % len(tc.JOBS)]
            barrier.wait()
            results[t] = (name, tc._as_numpy(func(shared[src])))

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        for name, got in results:
            calls += 1
            if not tc._equal(got, serial[name]):
                mismatches[name] += 1
    thread_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        jobs = list(range(len(tc.JOBS))) * rounds
        process_results = list(pool.map(tc.run_job, jobs))
    for name, got in process_results:
        if not tc._equal(got, serial[name]):
            mismatches["process:" + name] += 1
    return dict(rounds=rounds, threads=threads, thread_calls=calls, thread_seconds=thread_seconds,
                processes=processes, process_calls=len(process_results), process_seconds=time.perf_counter() - t0,
                mismatches=dict(mismatches))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per target (default 20000)")
    parser.add_argument("--only", action="append", default=[], help="run targets whose name contains this")
    parser.add_argument("--no-torch", action="store_true", help="skip the nbwoq_torch targets")
    parser.add_argument("--json", help="write the figures as JSON")
    parser.add_argument("--concurrency", type=int, metavar="ROUNDS",
                        help="instead: ROUNDS rounds of 16 threads and ROUNDS passes over a 2-process spawn pool")
    args = parser.parse_args(argv)
    if args.concurrency:
        import torch  # noqa: F401 - loaded first, as nbwoq_torch users have it

        r = concurrency(args.concurrency, 16, 2)
        print(json.dumps(r, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        return 1 if r["mismatches"] else 0
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            with_torch = False
    import nbwoq
    import numba

    report = dict(examples_per_target=args.examples, numba=numba.__version__, threading_layer=None, targets={})
    print(f"{'target':<36} {'examples':>8} {'ok':>7} {'refused':>8} {'other':>6} {'failures':>8} {'s':>8} {'ex/s':>7}")
    chosen = targets(with_torch)
    for name, (strategy, check) in chosen.items():
        # --only: exact target names, else substrings of them
        if args.only and name not in args.only and not any(o in name and o not in chosen for o in args.only):
            continue
        r = run_target(strategy, check, args.examples)
        report["targets"][name] = r
        o = r["outcomes"]
        other = r["examples"] - o.get("ok", 0) - o.get("refused", 0) - sum(f["count"] for f in r["failures"].values())
        nfail = sum(f["count"] for f in r["failures"].values())
        print(f"{name:<36} {r['examples']:>8} {o.get('ok', 0):>7} {o.get('refused', 0):>8} {other:>6} {nfail:>8} "
              f"{r['seconds']:>8.1f} {r['examples'] / max(r['seconds'], 1e-9):>7.1f}", flush=True)
        for key, f in r["failures"].items():
            print(f"    FAILURE x{f['count']}: {f['first']}\n", flush=True)
    try:
        report["threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel ran (targets without kernels)
        report["threading_layer"] = None
    report["nbwoq_threads"] = nbwoq.get_num_threads()
    total = sum(r["examples"] for r in report["targets"].values())
    failed = sum(bool(r["failures"]) for r in report["targets"].values())
    seconds = sum(r["seconds"] for r in report["targets"].values())
    print(f"\n{total} examples over {len(report['targets'])} targets in {seconds:.0f} s; {failed} target(s) failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
