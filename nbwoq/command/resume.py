"""What an interrupted run left behind, and whether ``--resume`` may keep it.

A folder run records its settings in ``OUT.partial/nbwoq-run.json`` and, beside each
finished shard, its report rows, size and CRC-32 (``NAME.stats.json``). A single-file
(GGUF) run records in ``OUT.partial.run.json`` how many source shards, tensors and bytes
of ``OUT.partial`` are finished, and their CRC-32. Records are untrusted input: nothing
is kept unless its record is well formed, was made with the same settings and source,
and matches the bytes on disk; anything else is written again.
"""

import json
import os

from nbwoq.command import paths
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError

RUN_FILE = "nbwoq-run.json"
STATS_SUFFIX = ".stats.json"


def file_state_path(partial):
    """Progress record of a single-file (GGUF) run: ``OUT.partial.run.json``."""
    return partial + ".run.json"


def write_json_atomic(path, value):
    tmp = path + ".tmp"
    with paths.create_new(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _refuse(partial):
    raise InputError(f"cannot resume {partial!r}: it was started with other settings or another source "
                     "(run without --resume to start over)")


_ROW_KEYS = {"name": str, "shape": list, "dtype": str, "format": str, "seconds": (int, float),
             "bytes_in": int, "bytes_out": int, "shard": str}


def valid_rows(rows, infos):
    """True when ``rows`` are report rows of exactly ``infos``, in order, well typed."""
    if not isinstance(rows, list) or len(rows) != len(infos):
        return False
    for row, info in zip(rows, infos):
        if not isinstance(row, dict) or row.get("name") != info.name or row.get("shape") != list(info.shape):
            return False
        if not all(isinstance(row.get(k), t) and not isinstance(row.get(k), bool) for k, t in _ROW_KEYS.items()):
            return False
        for key in ("rel_mse", "weighted_error", "rtn_weighted_error"):
            if row.get(key) is not None and (not isinstance(row[key], (int, float)) or isinstance(row[key], bool)):
                return False
        if not isinstance(row.get("clip"), (type(None), int, float, dict)):
            return False
    return True


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _crc_of(path, nbytes):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return st.file_crc32(fd, 0, nbytes)
    finally:
        os.close(fd)


def finished_file_part(partial, run_id, header, plan):
    """The finished part of an earlier single-file run, or None:
    ``(n_tensors, n_shards, rows, n_bytes, crc)``.

    Nothing in the record is trusted: it is kept only when it is well formed, names the
    same settings and source, covers whole shards of ``plan`` (``[(shard, [(info,
    selected)])]``) with their rows, and the file starts with the very header this run
    writes and holds the recorded bytes with the recorded CRC-32. A well-formed record of
    other settings or another source raises ``InputError``, as for a folder.
    """
    try:
        if os.path.islink(partial) or not os.path.isfile(partial):
            return None
        with open(file_state_path(partial), "rb") as f:
            state = json.loads(f.read(64 << 20).decode("utf-8"))
        size = os.path.getsize(partial)
        with open(partial, "rb") as f:
            same_header = f.read(len(header)) == header
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict):
        return None
    if "run" in state and state["run"] != run_id:
        _refuse(partial)
    n_tensors, n_shards, n_bytes, crc = (state.get(k) for k in ("tensors", "shards", "bytes", "crc"))
    if not (all(_is_count(v) for v in (n_tensors, n_shards, n_bytes, crc)) and same_header
            and state.get("run") == run_id and n_shards <= len(plan) and len(header) <= n_bytes <= size):
        return None
    infos = [info for _, items in plan[:n_shards] for info, _ in items]
    if n_tensors != len(infos) or not valid_rows(state.get("rows"), infos):
        return None
    try:
        if _crc_of(partial, n_bytes) != crc:
            return None
    except (OSError, ValueError):
        return None
    return n_tensors, n_shards, state["rows"], n_bytes, crc


def check_folder_run(partial, run_id):
    """Raise ``InputError`` unless folder ``partial`` was started with ``run_id``."""
    try:
        with open(os.path.join(partial, RUN_FILE)) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = None
    if previous != run_id:
        _refuse(partial)


def finished_shard_rows(folder, name, infos):
    """The report rows of shard ``name`` when it was finished in ``folder``, else None.

    Its record (``NAME.stats.json``) must be well formed, list exactly ``infos``, and
    give the shard's size and CRC-32, which are checked against the file.
    """
    path = os.path.join(folder, name)
    stats = path + STATS_SUFFIX
    try:
        if os.path.islink(path) or os.path.islink(stats) or not (os.path.isfile(path) and os.path.isfile(stats)):
            return None
        with open(stats, "rb") as f:
            record = json.loads(f.read(64 << 20).decode("utf-8"))
        if not isinstance(record, dict) or not valid_rows(record.get("rows"), infos):
            return None
        if not (_is_count(record.get("crc")) and record.get("bytes") == os.path.getsize(path)):
            return None
        st.read_header(path)
        if _crc_of(path, record["bytes"]) != record["crc"]:
            return None
    except (ValueError, OSError, RecursionError):
        return None
    return record["rows"]


def drop_records(folder):
    """Remove the run's records from a finished output folder."""
    for fname in os.listdir(folder):
        if fname.endswith(STATS_SUFFIX) or fname == RUN_FILE:
            os.remove(os.path.join(folder, fname))
