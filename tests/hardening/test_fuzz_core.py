"""Short fuzz profile of every public function of ``nbwoq`` (the long run is
``scripts/fuzz_long.py``). What a case must do is in the ``fuzz`` package's notes: a valid
result equal to the reference path's, or ValueError/TypeError naming a bad argument
with the input left byte-identical; anything else fails."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import cli, core, files, strategies
from fuzz.profile import EXAMPLES, FUZZ
import nbwoq


@pytest.mark.parametrize("func", sorted(strategies.CASES))
def test_fuzz_core(func):
    @FUZZ
    @given(strategies.CASES[func]())
    def run(case):
        core.check_core_case(case)

    run()


@FUZZ
@given(files.load_cases())
def test_fuzz_load_and_dequantize(case):
    files.check_load_case(case)


@FUZZ
@given(st.one_of(st.integers(-2, 2 * os.cpu_count() + 2), st.sampled_from((1.0, "2", None, True, np.int64(1)))))
def test_fuzz_set_num_threads(n):
    before = nbwoq.get_num_threads()
    try:
        nbwoq.set_num_threads(n)
    except (TypeError, ValueError) as exc:
        assert "n must" in str(exc)
        assert nbwoq.get_num_threads() == before
        return
    finally_n = nbwoq.get_num_threads()
    nbwoq.set_num_threads(before)
    assert finally_n == int(n)


def test_the_checker_can_fail():
    """The checker itself: a wrong result, a stray exception and a write before an error
    are each caught (a fuzz test that cannot fail proves nothing)."""
    w = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    info = dict(shape=(2, 8), dtype="float32", profile="plain", seed=0, layout="C")
    case = dict(func="quant_tensor", weight=w, info=info, args=dict(bits=4, group_size=4), kwargs={})

    def wrong(case):
        case["weight"] += 1  # not what quant_tensor computes
        return case["weight"]

    def stray(case):
        raise IndexError("boom")

    def writes_then_raises(case):
        case["weight"][0, 0] = 5
        raise ValueError("group_size is bad")

    for call, match in ((wrong, "differ"), (stray, "IndexError"), (writes_then_raises, "refused a valid call")):
        with pytest.raises(core.FuzzFailure, match=match):
            core.run_case(dict(case, weight=w.copy()), call, core.validate_core)
    bad = dict(case, weight=w.copy(), args=dict(bits=4, group_size=0))
    with pytest.raises(core.FuzzFailure, match="changed"):
        core.run_case(bad, writes_then_raises, core.validate_core)


@settings(FUZZ, max_examples=max(5, EXAMPLES // 3))
@given(cli.cli_cases())
def test_fuzz_cli(argv):
    before = nbwoq.get_num_threads()
    try:
        cli.check_cli(argv)
    finally:
        nbwoq.set_num_threads(before)  # --threads is process-wide
