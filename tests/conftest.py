"""Shared fixtures: the two paths every core function is checked on, and a report of
how often the reference's per-op half rounding differs from nbwoq's single rounding."""

import os
import shutil
import tempfile

import numpy as np
import pytest

try:
    import array_api_strict
except ImportError:  # pragma: no cover
    array_api_strict = None


class Path:
    """How a test hands arrays to nbwoq and reads results back as NumPy."""

    def __init__(self, name, to_array, to_numpy):
        self.name = name
        self.to_array = to_array
        self.to_numpy = to_numpy

    def __repr__(self):
        return self.name


def _strict_to_numpy(a):
    return None if a is None else np.asarray(a)


PATHS = {"numba": Path("numba", lambda a: a, lambda a: None if a is None else np.asarray(a))}
if array_api_strict is not None:
    PATHS["reference-strict"] = Path("reference-strict", lambda a: array_api_strict.asarray(a), _strict_to_numpy)


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def path(request):
    """Each core path: NumPy through the Numba kernels, and the array-API reference under
    ``array_api_strict`` (float32/float64 only: the standard has no half types)."""
    return PATHS[request.param]




def pytest_terminal_summary(terminalreporter):
    """With ``-v``: how often the reference's per-op half rounding differs from nbwoq's
    (information, not a failure, so a plain run does not print it)."""
    from half_report import HALF_DIFFERENCES

    if HALF_DIFFERENCES and terminalreporter.config.option.verbose > 0:
        terminalreporter.section("information: codes differing from native-half golden cases (deliberate "
                                 "difference 1)", sep="-")
        for key, (diff, total) in sorted(HALF_DIFFERENCES.items()):
            terminalreporter.write_line(f"{key}: {diff} of {total} values ({100.0 * diff / max(total, 1):.2f}%)")


# Everything the suite writes to "the temporary folder" (tempfile, pytest's tmp_path, the
# subprocesses it starts, which inherit TMPDIR) goes to one folder of this session,
# removed when the session ends: a run leaves nothing behind in /tmp.
_SESSION_TMP = []


def pytest_configure(config):
    folder = tempfile.mkdtemp(prefix="nbwoq-tests-")
    _SESSION_TMP.append(folder)
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = folder
    # a pytest-xdist worker (``-n 2``) inherits the controller's TMPDIR, so its folder
    # sits inside the controller's; its tmp_path moves there too, from the basetemp
    # xdist handed down, so tempfile, tmp_path and subprocesses share one folder
    if config.option.basetemp is None or os.environ.get("PYTEST_XDIST_WORKER"):
        config.option.basetemp = os.path.join(folder, "pytest")


def pytest_unconfigure(config):
    while _SESSION_TMP:
        shutil.rmtree(_SESSION_TMP.pop(), ignore_errors=True)
