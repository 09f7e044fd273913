"""What an interrupted run left behind, and whether ``--resume`` may keep it.

A folder run records its settings in ``OUT.partial/nbwoq-run.json`` and, beside each
finished shard, its report rows (``NAME.stats.json``). A single-file (GGUF) run records
in ``OUT.partial.run.json`` how many source shards, tensors and bytes of ``OUT.partial``
are finished. Nothing is kept unless it was made with the same settings and source.
"""

import json
import os

from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError

RUN_FILE = "nbwoq-run.json"
STATS_SUFFIX = ".stats.json"


def file_state_path(partial):
    """Progress record of a single-file (GGUF) run: ``OUT.partial.run.json``."""
    return partial + ".run.json"


def write_json_atomic(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _refuse(partial):
    raise InputError(f"cannot resume {partial!r}: it was started with other settings or another source "
                     "(run without --resume to start over)")


def finished_file_part(partial, run_id, header):
    """The finished part of an earlier single-file run, or None:
    ``(n_tensors, n_shards, rows, n_bytes)``.

    It is kept only when that run had the same settings and source, its file starts with
    the very header this run writes, and holds every byte of the tensors it recorded.
    Other settings or another source raise ``InputError``, as for a folder.
    """
    try:
        with open(file_state_path(partial)) as f:
            state = json.load(f)
        with open(partial, "rb") as f:
            same_header = f.read(len(header)) == header
        size = os.path.getsize(partial)
    except (OSError, ValueError):
        return None
    if state.get("run") != run_id:
        _refuse(partial)
    if not same_header or size < state.get("bytes", float("inf")):
        return None
    return state["tensors"], state["shards"], state["rows"], state["bytes"]


def check_folder_run(partial, run_id):
    """Raise ``InputError`` unless folder ``partial`` was started with ``run_id``."""
    try:
        with open(os.path.join(partial, RUN_FILE)) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = None
    if previous != run_id:
        _refuse(partial)


def finished_shard_rows(folder, name):
    """The report rows of shard ``name`` when it was finished in ``folder``, else None."""
    path = os.path.join(folder, name)
    stats = path + STATS_SUFFIX
    if not (os.path.exists(path) and os.path.exists(stats)):
        return None
    try:
        st.read_header(path)
        with open(stats) as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


def drop_records(folder):
    """Remove the run's records from a finished output folder."""
    for fname in os.listdir(folder):
        if fname.endswith(STATS_SUFFIX) or fname == RUN_FILE:
            os.remove(os.path.join(folder, fname))
