"""Where the command may write, and how: inside OUT only, never through a symlink, one
run per OUT.

Every name that becomes part of an output path (a shard named by a source's index, a
side file) is checked to be a plain file name; files are created exclusively
(``O_EXCL | O_NOFOLLOW``) after whatever stood at that name is unlinked (unlinking a
planted symlink removes the link, never its target); source and output are compared by
their real paths, not their spelling.
"""

import errno
import fcntl
import os

from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.source import plain_name  # noqa: F401 - the one rule, re-exported for the command

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def inside(path, folder):
    """True when real path ``path`` is ``folder`` or below it (both already real)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def real_out(out):
    """The real path OUT will have: its parent resolved, its own name kept (OUT itself may
    be a planted symlink, which is never followed)."""
    out = os.path.abspath(os.fspath(out))
    return os.path.join(os.path.realpath(os.path.dirname(out)), os.path.basename(out))


def check_out_vs_source(out, src):
    """Refuse an OUT that is the source, lies inside it, or holds it: replacing or removing
    OUT (``--overwrite``, or the partial output) must never touch the source, however
    either is spelled (symlinked parents, OUT a symlink to SRC)."""
    src_real = os.path.realpath(src)
    candidates = {real_out(out)}
    if os.path.lexists(out):
        candidates.add(os.path.realpath(out))
    for path in candidates:
        if inside(path, src_real) or inside(src_real, path):
            raise InputError(f"output {printable(out)} would overwrite the source {printable(src)}")


def remove_entry(path):
    """Remove what stands at ``path`` (a file, a symlink, or an empty-or-not folder that is
    not a symlink); nothing there is fine."""
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def create_new(path, mode="wb"):
    """Open a new file at ``path`` for writing: whatever stood there is unlinked first, and
    the file is created exclusively without following a symlink."""
    remove_entry(path)
    fd = os.open(path, _CREATE, 0o644)
    return os.fdopen(fd, mode)


def open_existing(path, mode="r+b"):
    """Open an existing regular file without following a symlink (``InputError`` if a
    symlink or something else stands there)."""
    try:
        fd = os.open(path, (os.O_RDWR if "+" in mode or "w" in mode else os.O_RDONLY)
                     | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{printable(path)} is a symlink; refusing to write through it") from None
        raise
    return os.fdopen(fd, mode)


def make_folder(path):
    """Create folder ``path`` (a symlink or file standing there is refused)."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise InputError(f"{printable(path)} exists and is not a folder of this run (a symlink or a file); "
                         "remove it, or run without --resume")
    os.makedirs(path, exist_ok=True)


class RunLock:
    """An advisory lock held for the whole run on ``OUT.lock`` beside OUT: a second run
    into the same OUT exits with one error line instead of interleaving its writes.

    The lock file is removed when the run ends. A run that finds the file replaced after
    it took the lock (another run removed it and made a new one) locks the new one.
    """

    def __init__(self, out):
        self.path = real_out(out) + ".lock"
        self._fd = None

    def __enter__(self):
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(f"another nbwoq run is writing {printable(self.path[:-5])} "
                                 f"(it holds {printable(self.path)}); wait for it to finish") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)  # removed or replaced between our open and our lock: take the new one
        raise InputError(f"could not lock {printable(self.path)}")

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.remove(self.path)  # still held: a run waiting on the old file retries
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
