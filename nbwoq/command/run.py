"""One quantization run: plan, stream every tensor through the core, write, report.

Atomicity: output goes to ``OUT.partial`` (a folder, or a file for GGUF) and is renamed
to ``OUT`` only when everything is written. Inside a partial folder each shard is
written as ``NAME.tmp`` and renamed when complete, next to a ``NAME.stats.json`` with
its tensors' report rows, so ``resume=True`` keeps finished shards (after checking that
the settings and the source are the same) and redoes only the rest (``resume``).
"""

import json
import os
import shutil
import time

from nbwoq._threads import set_num_threads
from nbwoq._version import __version__
from nbwoq.command import resume as records
from nbwoq.command.report import summarize, tensor_row
from nbwoq.formats import quantizer
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError
from nbwoq.formats.gguf_format import GgufWriter
from nbwoq.formats.gptq_format import GptqWriter
from nbwoq.formats.nbwoq_format import NbwoqWriter
from nbwoq.formats.source import INDEX_NAME, Source
from nbwoq.formats.writer import encode_tensor

#: Output formats: adding one is a module with a ``writer.FolderWriter`` or
#: ``writer.FileWriter`` and a line here.
FORMATS = {"nbwoq": NbwoqWriter, "gguf": GgufWriter, "gptq": GptqWriter}
PARTIAL = ".partial"
# Files of a model folder that are not weights; copied along (config.json may be rewritten).
_AUX_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", INDEX_NAME)


def _progress(total, enabled, initial=0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc="quantizing", dynamic_ncols=True, leave=False)


def _out_shard_name(source, shard):
    if source.kind == "gguf":
        return "model.safetensors"
    return shard if shard.endswith(".safetensors") else shard + ".safetensors"


def quantize_checkpoint(src, out, options, fmt="nbwoq", overwrite=False, resume=False, progress=False,
                        threads=None, log=None):
    """Quantize checkpoint ``src`` into ``out`` in format ``fmt``; returns the report dict.

    Raises ``InputError`` for anything wrong with the arguments or the source, before
    any output is written.
    """
    t_start = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {tuple(FORMATS)}, got {fmt!r}")
    if threads is not None:
        import numba

        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise InputError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
        set_num_threads(threads)
    source = Source(src)
    writer = FORMATS[fmt](options, source)
    out = os.path.abspath(os.fspath(out))
    src_abs = os.path.abspath(source.path)
    if out == src_abs or src_abs.startswith(out + os.sep):
        raise InputError(f"output {out!r} would overwrite the source")
    if os.path.exists(out) and not overwrite:
        raise InputError(f"output {out!r} already exists; pass --overwrite to replace it")
    if writer.output_is_file and os.path.isdir(out):
        raise InputError(f"--format {fmt} writes one file, but {out!r} is a folder")

    plan = []  # (shard, [(info, selected)])
    for shard, infos in source.shards:
        items = []
        for info in infos:
            selected = options.selects(info.name, info.shape, info.dtype)
            writer.check_tensor(info, selected)
            items.append((info, selected))
        plan.append((shard, items))
    if not any(sel for _, items in plan for _, sel in items):
        raise InputError("no tensor selected for quantization (check --include/--exclude)")

    partial = out + PARTIAL
    run_id = dict(nbwoq=__version__, format=fmt, options=options.as_dict(), source=source.fingerprint())
    run = _run_file if writer.output_is_file else _run_folder
    rows, resumed = run(source, writer, plan, partial, run_id, resume, progress, log)
    _finish(partial, out, overwrite)
    label = f"{writer.type_name}: {options.label()}" if writer.output_is_file else options.label()
    return summarize(rows, time.perf_counter() - t_start, fmt, options, source, out, resumed, label)


def _write_padded(f, outputs, alignment):
    """Each output's bytes and the zeros that pad them to ``alignment``; returns their size."""
    n = 0
    for _, data in outputs:
        raw = data if data.flags.c_contiguous else data.copy()
        f.write(memoryview(raw.reshape(-1)).cast("B"))
        f.write(bytes(-raw.nbytes % alignment))
        n += raw.nbytes
    return n


def _run_file(source, writer, plan, partial, run_id, resume, progress, log):
    """A single-file (GGUF) run, written in place as ``OUT.partial``.

    The writer's header comes first; the tensor data follows in plan order, each tensor
    padded to the alignment. After each source shard the file is fsynced and its record
    (``resume.file_state_path``) says how many tensors and bytes it holds, with their
    report rows. ``resume`` cuts the file back to those bytes and carries on from the next
    shard: nothing is copied or quantized twice. Returns ``(rows, resumed_shards)``.
    """
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    state_path = records.file_state_path(partial)
    header, alignment = writer.header([item for _, items in plan for item in items], partial + ".header")
    done = records.finished_file_part(partial, run_id, header) if resume and os.path.exists(partial) else None
    if resume and os.path.exists(partial) and done is None and log:
        log(f"resume: {os.path.basename(partial)} does not hold what its record says; starting it over")
    if done is None and os.path.exists(state_path):
        os.remove(state_path)
    n_done, shards_done, rows, kept = done if done is not None else (0, 0, [], 0)
    total = sum(info.nbytes for _, items in plan for info, _ in items)
    skipped = sum(info.nbytes for _, items in plan[:shards_done] for info, _ in items)
    if n_done and log:
        log(f"resume: keeping the {n_done} tensors of {shards_done} finished shards")
    if done is not None:
        f = open(partial, "r+b")
        f.truncate(kept)  # whatever follows belongs to a shard that did not finish
        f.seek(kept)
    else:
        f = open(partial, "wb")
        f.write(header)
    bar = _progress(total, progress, initial=skipped)
    label = writer.type_name
    work, scratch = quantizer.Scratch(), quantizer.Scratch()
    try:
        index = n_done
        for shard_no, (shard, items) in enumerate(plan):
            if shard_no < shards_done:
                continue
            for info, selected in items:
                t0 = time.perf_counter()
                with source.open(info) as (array, dtype_name):
                    encoded = encode_tensor(writer, info, array, dtype_name, selected, work, scratch)
                    nbytes = _write_padded(f, encoded.outputs, alignment)
                rows.append(tensor_row(info, shard, label, encoded, nbytes, time.perf_counter() - t0))
                index += 1
                if bar is not None:
                    bar.update(info.nbytes)
            f.flush()
            os.fsync(f.fileno())
            records.write_json_atomic(state_path, dict(run=run_id, tensors=index, shards=shard_no + 1,
                                                       bytes=f.tell(), rows=rows))
        f.close()
    except BaseException:
        f.close()
        if not os.path.exists(state_path):
            os.remove(partial)  # no shard finished: nothing to resume from
        raise
    finally:
        if bar is not None:
            bar.close()
    os.remove(state_path)
    return rows, shards_done


def _run_folder(source, writer, plan, partial, run_id, resume, progress, log):
    """A folder run: one safetensors shard per source shard, each written as ``NAME.tmp``
    and renamed when complete. Returns ``(rows, resumed_shards)``."""
    if os.path.isdir(partial) and resume:
        records.check_folder_run(partial, run_id)
    elif os.path.exists(partial):
        shutil.rmtree(partial) if os.path.isdir(partial) else os.remove(partial)
    os.makedirs(partial, exist_ok=True)
    with open(os.path.join(partial, records.RUN_FILE), "w") as f:
        json.dump(run_id, f, indent=1)

    names = {shard: _out_shard_name(source, shard) for shard, _ in plan}
    done = {shard: records.finished_shard_rows(partial, names[shard]) if resume else None for shard, _ in plan}
    total = sum(info.nbytes for _, items in plan for info, _ in items)
    skipped = sum(info.nbytes for shard, items in plan if done[shard] is not None for info, _ in items)
    bar = _progress(total, progress, initial=skipped)
    rows, resumed = [], 0
    weight_map = {}
    stream = _ShardStream(source, writer)
    try:
        for shard, items in plan:
            name = names[shard]
            for info, sel in items:
                for oname, _, _ in writer.specs(info, sel):
                    weight_map[oname] = name
            if done[shard] is not None:
                rows += done[shard]
                resumed += 1
                if log:
                    log(f"resume: keeping finished shard {name}")
                continue
            path = os.path.join(partial, name)
            shard_rows = stream.write(path + ".tmp", name, items, bar)
            with open(path + records.STATS_SUFFIX, "w") as f:
                json.dump(shard_rows, f)
            os.replace(path + ".tmp", path)
            rows += shard_rows
    finally:
        if bar is not None:
            bar.close()
    _write_aux(source, writer, partial, weight_map, len(plan))
    return rows, resumed


class _ShardStream:
    """Writes shards through a background ``StreamWriter``.

    Output buffers alternate between two sets: the writer thread writes one tensor's
    while the next is computed into the other. A safetensors source's unselected tensors
    are copied file to file by the kernel, never mapped here.
    """

    def __init__(self, source, writer):
        self.writer = writer
        self.source = source
        self.label = writer.options.label()
        self.work = quantizer.Scratch()  # the float32 working copy: never part of the outputs
        self.out_scratch = (quantizer.Scratch(), quantizer.Scratch())
        self.verbatim = source.kind == "safetensors" and writer.copies_verbatim
        self.parity = 0

    def write(self, tmp_path, name, items, bar):
        """Write shard ``items`` to ``tmp_path``; returns its report rows. On any error the
        torn file is removed (a killed run's ``.tmp`` is rewritten by ``--resume``)."""
        writer = self.writer
        specs = [s for info, sel in items for s in writer.specs(info, sel)]
        sw = st.StreamWriter(tmp_path, specs, writer.metadata([i for i, s in items if s]), background=True)
        shard_rows = []
        last_use = [0, 0]  # per buffer set: the ticket of the last write reading it
        try:
            for info, selected in items:
                t0 = time.perf_counter()
                if not selected and self.verbatim:
                    sw.copy_range(info.name, info.path, info.start, info.nbytes)
                    shard_rows.append(tensor_row(info, name, self.label, None, info.nbytes, time.perf_counter() - t0))
                else:
                    shard_rows.append(self._tensor(sw, info, selected, name, last_use, t0))
                if bar is not None:
                    bar.update(info.nbytes)
            sw.close()
        except BaseException:
            sw.abort()
            os.remove(tmp_path)
            raise
        return shard_rows

    def _tensor(self, sw, info, selected, name, last_use, t0):
        with self.source.open(info) as (array, dtype_name):
            if selected:
                self.parity ^= 1
                sw.wait(last_use[self.parity])
            encoded = encode_tensor(self.writer, info, array, dtype_name, selected, self.work,
                                    self.out_scratch[self.parity])
            nbytes = 0
            ticket = 0
            for oname, arr in encoded.outputs:
                ticket = sw.write(oname, arr)  # a copied tensor's map stays open until written
                nbytes += arr.nbytes
            if selected:
                last_use[self.parity] = ticket
        return tensor_row(info, name, self.label, encoded, nbytes, time.perf_counter() - t0)


def _write_aux(source, writer, folder, weight_map, n_shards):
    if source.folder:
        for fname in sorted(os.listdir(source.folder)):
            full = os.path.join(source.folder, fname)
            if os.path.isfile(full) and not fname.endswith(_AUX_SKIP) and fname != "config.json":
                shutil.copyfile(full, os.path.join(folder, fname))
    if source.config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(writer.config(source.config), f, indent=2)
    if n_shards > 1:
        total = 0
        for fname in set(weight_map.values()):
            tensors, _ = st.read_header(os.path.join(folder, fname))
            total += sum(t.nbytes for t in tensors.values())
        with open(os.path.join(folder, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _finish(partial, out, overwrite):
    """Put the finished output in place; an existing output is replaced only now."""
    if os.path.isdir(partial):
        records.drop_records(partial)
    old = None
    if os.path.exists(out):
        if not overwrite:  # appeared while we ran
            raise InputError(f"output {out!r} appeared while quantizing; the result is left in {partial!r}")
        old = out + f".old-{os.getpid()}"
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
