"""Numba settings, in one place.

Every kernel module takes its ``njit`` options from here so that cache, parallelism and
fastmath are decided once. Environment variables override the defaults:

``NBWOQ_CACHE``
    ``0`` turns the on-disk JIT cache off (default on). When Numba has no writable
    directory for it (``NUMBA_CACHE_DIR``, the package's ``__pycache__``, the user cache
    directory: a read-only install without a home), the cache is turned off with one
    ``RuntimeWarning`` instead of every kernel failing to compile.
``NBWOQ_PARALLEL``
    ``0`` compiles serial kernels (default parallel).

How many threads run, Numba's threading layer and ``NBWOQ_SERIAL_BELOW`` (small calls on
the calling thread alone) are ``_threads``' business; it sets Numba's environment
before Numba's import and depends on nothing here (this module depends on it).
"""

import os
import warnings

# First: _threads puts Numba's threading layer into the environment before Numba's import.
from nbwoq import _threads  # noqa: I001

import numba  # noqa: E402


def _env_flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _probe():
    """A function of this package's directory: where the kernels' cache would be."""


def _cache_available():
    """Whether Numba finds a writable cache directory for this package's kernels. It
    tries ``NUMBA_CACHE_DIR``, then the source's ``__pycache__``, then the user cache
    directory, and raises ``RuntimeError`` at decoration time when none is writable."""
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(_probe)
    except RuntimeError:
        return False
    return True


CACHE = _env_flag("NBWOQ_CACHE", True)
if CACHE and not _cache_available():
    CACHE = False
    warnings.warn(
        "nbwoq: Numba has no writable directory for its JIT cache (NUMBA_CACHE_DIR, nbwoq's __pycache__, "
        "the user cache directory), so nbwoq's kernels are compiled in every process; set NUMBA_CACHE_DIR "
        "to a writable directory to keep them (or NBWOQ_CACHE=0 to silence this)",
        RuntimeWarning,
        stacklevel=2,
    )
PARALLEL = _env_flag("NBWOQ_PARALLEL", True)

# fastmath stays off: it turns divisions into reciprocal multiplies and flips the
# rounding decisions that must match the reference bit for bit.
KERNEL = dict(nogil=True, cache=CACHE, parallel=PARALLEL, fastmath=False, error_model="numpy")

# Reductions whose result does not depend on order or on NaN handling (min/max over
# data already known to be finite, sums that only need to become NaN on a non-finite
# value, error sums compared with a tolerance): LLVM vectorizes them only with these
# flags. Never used where a code is decided.
REDUCTION = dict(nogil=True, cache=CACHE, fastmath={"nnan", "nsz", "reassoc"}, error_model="numpy")


_CORRUPT_WARNED = []


def _tolerant_cache(dispatcher):
    """Give ``dispatcher`` an on-disk cache that survives a corrupt cache file: a file
    that cannot be read is removed with one ``RuntimeWarning`` per process and the
    kernel is compiled (and cached afresh), instead of every call failing."""
    from numba.core.caching import FunctionCache

    class TolerantCache(FunctionCache):
        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as exc:  # unpickling garbage raises anything
                self._discard(exc)
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception as exc:
                self._discard(exc)

        def _discard(self, exc):
            path = getattr(self._cache_file, "_index_path", None)
            if path:
                try:
                    os.remove(path)  # the index names the data files: without it they are unused
                except OSError:
                    pass
            if not _CORRUPT_WARNED:
                _CORRUPT_WARNED.append(True)
                warnings.warn(f"nbwoq: a Numba cache file could not be read ({type(exc).__name__}: {exc}); "
                              "it was removed and the kernel compiled again", RuntimeWarning, stacklevel=3)

    if CACHE and getattr(dispatcher, "_cache", None) is not None:
        dispatcher._cache = TolerantCache(dispatcher.py_func)
    return dispatcher


def njit(**options):
    """``numba.njit(**options)`` with the cache that survives corrupt files."""
    def decorate(func):
        return _tolerant_cache(numba.njit(**options)(func))
    return decorate


#: Serial helpers called from kernels (and from Python in tests): the kernel settings
#: without the parallel pass.
HELPER = dict(nogil=True, cache=CACHE, fastmath=False, error_model="numpy")


def njit_helper(func):
    """Compile ``func`` as a serial helper with the project's settings."""
    return njit(**HELPER)(func)


def njit_kernel(func):
    """Compile ``func`` as a parallel kernel with the project's settings.

    The dispatcher is wrapped so that each call from Python runs with nbwoq's thread
    count (``_threads.ParallelKernel``); jitted callers still call it directly.
    """
    return _threads.ParallelKernel(njit(**KERNEL)(func))
