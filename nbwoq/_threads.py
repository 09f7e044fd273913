"""How many threads nbwoq's kernels use, and how they share the cores with torch.

Threading layer
---------------
This module asks Numba for its OpenMP layer first (``NUMBA_THREADING_LAYER_PRIORITY``
``"omp tbb workqueue"``, unless the user set ``NUMBA_THREADING_LAYER`` or the priority
themselves), in the environment before it imports Numba. It imports nothing of nbwoq, and
the package's ``__init__`` imports it before any module that imports Numba, so Numba
reads the setting at its own import (``tests/test_config.py`` proves the order).
Why OpenMP:

* torch's CPU build runs its intra-op work on GNU OpenMP, and Numba's OpenMP layer binds
  to the same ``libgomp`` (whichever copy the process loaded first). nbwoq's kernels and
  torch's ops then run on one worker pool: alternating them never leaves one runtime's
  idle, spinning workers competing with the other's for the cores, as a second pool
  (TBB or workqueue) would.
* It is thread-safe: kernels release the GIL and may run from several Python threads at
  once. Numba's workqueue layer is not (concurrent launches abort the process); should
  Numba end up on it (no OpenMP and no TBB on the machine), ``ParallelKernel`` runs one
  launch at a time instead.

Its costs, accepted knowingly:

* GNU OpenMP is not fork-safe. A process forked after a kernel ran must not run a kernel
  (Numba terminates it). Use the ``spawn`` or ``forkserver`` start method for worker
  processes, or install ``tbb`` and set ``NUMBA_THREADING_LAYER=tbb``.
* Numba's first launch calls ``omp_set_num_threads`` in the launching thread; with a
  shared ``libgomp`` that silently changed torch's thread count. ``_launch`` puts the
  thread's OpenMP settings back.
* Calls from several Python threads at once each get a team of their own threads: give
  each caller its share (``set_num_threads``, ``torch.set_num_threads``) when running
  nbwoq and torch side by side.

Small calls
-----------
``NBWOQ_SERIAL_BELOW``: calls on fewer elements than this run on the calling thread
alone (default 65536): below it, waking the thread pool costs more than the work.

Thread count
------------
``set_num_threads`` is process-wide, like ``torch.set_num_threads``. Numba's own count is
per Python thread, so every kernel call brings the calling thread's count up to date
(a thread-local comparison; ``numba.set_num_threads`` runs only after a change). It
never touches torch's count, and torch's never touches it.
"""

import ctypes
import functools
import operator
import os
import threading

_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
_USER_CHOSE_LAYER = "NUMBA_THREADING_LAYER" in os.environ or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ
if not _USER_CHOSE_LAYER:
    # Before Numba's import, and kept in the environment so its config reloads agree.
    os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = " ".join(_LAYER_PRIORITY)

import numba  # noqa: E402
import numpy as np  # noqa: E402

if not _USER_CHOSE_LAYER:
    # Only matters when the caller imported Numba before nbwoq: it has read its
    # environment already.
    numba.config.THREADING_LAYER_PRIORITY = list(_LAYER_PRIORITY)

SERIAL_BELOW = int(os.environ.get("NBWOQ_SERIAL_BELOW", 1 << 16))

_lock = threading.Lock()
_local = threading.local()
# (generation, count): one tuple so a reader never sees a half-made update.
# count None means Numba's default (NUMBA_NUM_THREADS).
_setting = (0, None)
_launched = False
# A lock when the threading layer cannot run two launches at once (workqueue).
_serial = None


def _openmp_controls():
    """The calling thread's OpenMP settings, through the ``libgomp`` in the global symbol
    scope (torch puts its copy there), or None when no OpenMP runtime is loaded yet."""
    try:
        lib = ctypes.CDLL(None)
        return (lib.omp_get_max_threads, lib.omp_set_num_threads,
                lib.omp_get_max_active_levels, lib.omp_set_max_active_levels)
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return None


def _launch():
    """Start Numba's pool once, leaving the thread's OpenMP settings as they were."""
    global _launched, _serial
    with _lock:
        if _launched:
            return
        controls = _openmp_controls()
        before = (controls[0](), controls[2]()) if controls else None
        numba.get_num_threads()  # starts the pool (public API, idempotent)
        if controls and (controls[0](), controls[2]()) != before:
            # Numba sets the thread count and enables nesting on its first launch.
            controls[1](before[0])
            controls[3](before[1])
        if numba.threading_layer() == "workqueue":
            _serial = threading.Lock()
        _launched = True


def apply():
    """Make the calling thread's Numba thread count nbwoq's (cheap when it already is)."""
    if not _launched:
        _launch()
    generation, count = _setting
    if count is not None and getattr(_local, "generation", -1) != generation:
        numba.set_num_threads(count)
        _local.generation = generation


def set_num_threads(n):
    """Set how many threads nbwoq's kernels use, in every Python thread.

    torch's thread count is not affected (and ``torch.set_num_threads`` does not affect
    this one).

    Parameters
    ----------
    n : int
        1 to ``numba.config.NUMBA_NUM_THREADS`` (the number of cores unless the
        ``NUMBA_NUM_THREADS`` environment variable says otherwise).

    Raises
    ------
    TypeError
        ``n`` is not an integer.
    ValueError
        ``n`` is out of range.

    Examples
    --------
    >>> import nbwoq
    >>> before = nbwoq.get_num_threads()
    >>> nbwoq.set_num_threads(1)
    >>> nbwoq.get_num_threads()
    1
    >>> nbwoq.set_num_threads(before)
    """
    global _setting
    if isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer, got {n!r}") from None
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n!r}")
    with _lock:
        _setting = (_setting[0] + 1, n)
    apply()


def get_num_threads():
    """The number of threads nbwoq's kernels use.

    Returns
    -------
    int
        The last ``set_num_threads`` value, else ``numba.config.NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import nbwoq
    >>> nbwoq.get_num_threads() >= 1
    True
    """
    count = _setting[1]
    return numba.config.NUMBA_NUM_THREADS if count is None else count


class ParallelKernel:
    """A parallel Numba dispatcher that applies nbwoq's thread count before each call.

    Every other attribute is the dispatcher's, ``_numba_type_`` included, so other
    jitted code types and calls the wrapped kernel directly (no Python in between).
    """

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        functools.update_wrapper(self, dispatcher.py_func, updated=())

    def __call__(self, *args, **kwargs):
        apply()
        # A small call runs on the calling thread alone: waking the pool costs more than
        # the work (tens of microseconds when idle, milliseconds on a loaded machine).
        work = next((a.size for a in args if isinstance(a, np.ndarray)), None)
        if work is not None and work < SERIAL_BELOW and numba.get_num_threads() > 1:
            previous = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                return self._launch(args, kwargs)
            finally:
                numba.set_num_threads(previous)
        return self._launch(args, kwargs)

    def _launch(self, args, kwargs):
        if _serial is None:
            return self.dispatcher(*args, **kwargs)
        with _serial:
            return self.dispatcher(*args, **kwargs)

    def __getattr__(self, name):
        if name == "dispatcher":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"ParallelKernel({self.dispatcher!r})"
