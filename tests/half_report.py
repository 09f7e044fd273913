"""SPEC deviation 1 report: how many native-half golden values differ from nbwoq's
single-rounding results (expected, reported at the end of the run, never asserted).

A module of its own (not conftest) so that test files in every folder import the same
object: ``from conftest import ...`` resolves to whichever conftest.py is first on
sys.path.
"""

import collections

HALF_DIFFERENCES = collections.defaultdict(lambda: [0, 0])


def record_half_difference(key, differing, total):
    entry = HALF_DIFFERENCES[key]
    entry[0] += int(differing)
    entry[1] += int(total)
