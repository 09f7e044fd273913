"""One quantization run: plan, stream every tensor through the core, write, report.

Atomicity: output goes to ``OUT.partial`` (a folder, or a file for GGUF) and is renamed
to ``OUT`` only when everything is written. Inside a partial folder each shard is
written as ``NAME.tmp`` and renamed when complete, next to a ``NAME.stats.json`` with
its tensors' report rows, so ``resume=True`` keeps finished shards (after checking that
the settings and the source are the same) and redoes only the rest (``resume``).
"""

import json
import os
import time
import zlib

from nbwoq._threads import set_num_threads
from nbwoq._version import __version__
from nbwoq.command import paths
from nbwoq.command import resume as records
from nbwoq.command.report import FirstOfKind, summarize, tensor_row
from nbwoq.formats import column_fold, quantizer, storage
from nbwoq.formats import safetensors_io as st
from nbwoq.formats.errors import InputError, printable
from nbwoq.formats.gguf_format import GgufWriter
from nbwoq.formats.gptq_format import GptqWriter
from nbwoq.formats.nbwoq_format import NbwoqWriter
from nbwoq.formats.source import INDEX_NAME, Source
from nbwoq.formats.writer import Encoded, encode_tensor

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
                        threads=None, log=None, report_path=None):
    """Quantize checkpoint ``src`` into ``out`` in format ``fmt``; returns the report dict.

    Raises ``InputError`` for anything wrong with the arguments or the source, before
    any output is written. ``report_path`` receives the report as JSON before OUT is put
    in place, so nothing can fail once OUT exists.
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
    paths.check_out_vs_source(out, source.path)
    paths.check_out_vs_source(out + PARTIAL, source.path)
    if os.path.lexists(out) and not overwrite:
        raise InputError(f"output {printable(out)} already exists; pass --overwrite to replace it")
    if writer.output_is_file and os.path.isdir(out):
        raise InputError(f"--format {fmt} writes one file, but {printable(out)} is a folder")
    if report_path is not None:
        report_path = _check_report_path(report_path, source.path, out)

    plan = []  # (shard, [(info, selected)])
    for shard, infos in source.shards:
        items = []
        for info in infos:
            selected = writer.select(info, options.selects(info.name, info.shape, info.dtype))
            writer.check_tensor(info, selected)
            items.append((info, selected))
        plan.append((shard, items))
    if not any(sel for _, items in plan for _, sel in items):
        if options.gguf_type is None:
            raise InputError("no tensor selected for quantization (check --include/--exclude)")
        if log:
            log(f"every tensor is already stored as --type {options.gguf_type} asks: copying them")
    requantized = sorted({info.dtype for _, items in plan for info, sel in items if sel and info.dtype not in storage.DTYPES})
    if requantized and log:
        log(f"warning: the source is already quantized ({', '.join(requantized)}); its tensors are decoded and "
            "quantized again, which adds the new error to the old")

    # --method sinq: every column scale is searched now, before anything is written
    fold = column_fold.ColumnFold.build(source, options, plan, log) if options.method == "sinq" else None
    partial = out + PARTIAL
    run_id = dict(nbwoq=__version__, format=fmt, options=options.as_dict(), source=source.fingerprint())
    run = _run_file if writer.output_is_file else _run_folder
    with paths.RunLock(out):
        rows, resumed = run(source, writer, plan, partial, run_id, resume, progress, log, fold)
        label = f"{writer.type_name}: {options.label()}" if writer.output_is_file else options.label()
        report = summarize(rows, time.perf_counter() - t_start, fmt, options, source, out, resumed, label)
        if report_path is not None:
            with paths.create_new(report_path + ".tmp", "w") as f:
                json.dump(report, f, indent=1)
            os.replace(report_path + ".tmp", report_path)
        _finish(partial, out, overwrite)
    return report


def _check_report_path(path, src, out):
    """The report's absolute path: its folder exists, and it is neither inside the source
    nor inside the output (where it would be lost or clobber a weight)."""
    path = paths.real_out(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise InputError(f"--report {printable(path)}: its folder does not exist")
    if os.path.isdir(path):
        raise InputError(f"--report {printable(path)} is a folder")
    src_real = os.path.realpath(src)
    for folder, what in ((src_real, "the source"), (paths.real_out(out), "the output"),
                         (paths.real_out(out) + PARTIAL, "the output")):
        if paths.inside(path, folder):
            raise InputError(f"--report {printable(path)} lies inside {what}")
    return path


def _write_padded(f, outputs, alignment, crc):
    """Each output's bytes and the zeros that pad them to ``alignment``; returns their size
    and the CRC-32 ``crc`` continued over what was written (None: not computed)."""
    n = 0
    for _, data in outputs:
        raw = data if data.flags.c_contiguous else data.copy()
        view = memoryview(raw.reshape(-1)).cast("B")
        pad = bytes(-raw.nbytes % alignment)
        f.write(view)
        f.write(pad)
        if crc is not None:
            crc = zlib.crc32(pad, zlib.crc32(view, crc))
        n += raw.nbytes
    return n, crc


#: Bytes read at a time when a tensor is copied file to file.
_COPY_CHUNK = 4 << 20
#: Source bytes of the tensors re-encoded together from their GGML blocks (one kernel
#: call: one launch and one split of the work per batch, not per tensor).
_BATCH_BYTES = 8 << 20


def _windows(items, writer):
    """``items`` (``[(info, selected)]``) in consecutive runs whose tensors the writer takes
    as blocks (``takes_blocks``) hold at most ``_BATCH_BYTES`` (or one tensor)."""
    window, size = [], 0
    for info, selected in items:
        if writer.takes_blocks(info, selected):
            if size and size + info.nbytes > _BATCH_BYTES:
                yield window
                window, size = [], 0
            size += info.nbytes
        window.append((info, selected))
    if window:
        yield window


def _requantize(source, writer, infos, scratch):
    """Re-encode ``infos`` together from one map of their source bytes; returns
    ``{id(info): (Encoded, seconds)}``, the batch's time shared by parameter count."""
    if not infos:
        return {}
    t0 = time.perf_counter()
    start, stop = min(info.start for info in infos), max(info.stop for info in infos)
    with source.open_bytes(start, stop) as data:
        results = writer.requantize(infos, data, start, scratch)
    seconds = time.perf_counter() - t0
    total = sum(info.size for info in infos)
    hint = writer.overflow_hint
    return {id(info): (Encoded(outputs, True, None, quantizer.stored_error(info.name, err, hint), norm),
                       seconds * info.size / total)
            for info, (outputs, err, norm) in zip(infos, results)}


def _copy_padded(f, source, info, alignment, crc, chunk):
    """Copy tensor ``info``'s stored bytes from the source file into ``f`` through the
    buffer ``chunk``, padded to ``alignment``; returns their size and the CRC-32 ``crc``
    continued over what was written (None: not computed)."""
    for view in source.read_chunks(info, chunk):
        f.write(view)
        if crc is not None:
            crc = zlib.crc32(view, crc)
    pad = bytes(-info.nbytes % alignment)
    f.write(pad)
    return info.nbytes, None if crc is None else zlib.crc32(pad, crc)


def _start_writeback(f, start):
    """Have the kernel start writing ``f``'s bytes from ``start`` on to disk now, while the
    next batch is computed, so that the shard's fsync finds little left to wait for
    (``POSIX_FADV_DONTNEED`` starts the writeback without waiting for it, and lets the
    pages go once written). Errors of that writeback surface at the fsync."""
    if _FADVISE is not None:
        f.flush()
        try:
            os.posix_fadvise(f.fileno(), start, f.tell() - start, _FADVISE)
        except OSError:  # a hint: a file system that does not take it loses nothing
            pass


_FADVISE = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None


def _run_file(source, writer, plan, partial, run_id, resume, progress, log, fold=None):
    """A single-file (GGUF) run, written in place as ``OUT.partial``.

    The writer's header comes first; the tensor data follows in plan order, each tensor
    padded to the alignment, then the writer's ``extra_tensors``. After each source shard
    the file is fsynced and, unless it was the last, its record
    (``resume.file_state_path``) says how many tensors and bytes it holds, their CRC-32
    and report rows. ``resume`` checks all of it, cuts the file back to those bytes and
    carries on from the next shard: nothing is copied or quantized twice.

    Tensors the writer re-encodes from their GGML blocks (``takes_blocks``) go through
    ``requantize`` in batches of about ``_BATCH_BYTES`` of source; copied tensors of a
    GGUF source are streamed file to file; ``fold`` (``column_fold``, or None) transforms the
    tensors it touches first. Returns ``(rows, resumed_shards)``.
    """
    if os.path.isdir(partial) and not os.path.islink(partial):
        paths.remove_entry(partial)
    state_path = records.file_state_path(partial)
    header, alignment = _file_header(writer, plan, partial)
    done = None
    if resume and os.path.lexists(partial):
        done = records.finished_file_part(partial, run_id, header, plan)
        if done is None and log:
            log(f"resume: {os.path.basename(partial)} does not hold what its record says; starting it over")
    if done is None:
        paths.remove_entry(state_path)
    n_done, shards_done, rows, kept, crc = done if done is not None else (0, 0, [], 0, 0)
    for row in rows:
        row["resumed"] = True
    total = sum(info.nbytes for _, items in plan for info, _ in items)
    skipped = sum(info.nbytes for _, items in plan[:shards_done] for info, _ in items)
    if n_done and log:
        log(f"resume: keeping the {n_done} tensors of {shards_done} finished shards")
    if done is not None:
        f = paths.open_existing(partial)
        f.truncate(kept)  # whatever follows belongs to a shard that did not finish
        f.seek(kept)
    else:
        f = paths.create_new(partial)
        f.write(header)
        crc = zlib.crc32(header)
    bar = _progress(total, progress, initial=skipped)
    label = writer.type_name
    work, scratch = quantizer.Scratch(), quantizer.Scratch()
    chunk = bytearray(_COPY_CHUNK)
    first = FirstOfKind()
    try:
        index = n_done
        for shard_no, (shard, items) in enumerate(plan):
            if shard_no < shards_done:
                continue
            if shard_no + 1 == len(plan):
                crc = None  # no record follows the last shard: its CRC-32 would go unread
            for window in _windows(items, writer):
                written = f.tell()
                batch = _requantize(source, writer, [info for info, sel in window if writer.takes_blocks(info, sel)],
                                    scratch)
                for info, selected in window:
                    t0 = time.perf_counter()
                    if id(info) in batch:
                        encoded, seconds = batch[id(info)]
                        nbytes, crc = _write_padded(f, encoded.outputs, alignment, crc)
                    elif not selected and writer.copies_raw(info):
                        encoded, seconds = None, 0.0  # streamed file to file: never mapped, never decoded
                        nbytes, crc = _copy_padded(f, source, info, alignment, crc, chunk)
                    else:
                        with column_fold.open_tensor(source, info, fold) as (array, dtype_name, measure):
                            encoded = encode_tensor(writer, info, array, dtype_name, selected, work, scratch,
                                                    measure)
                            nbytes, crc = _write_padded(f, encoded.outputs, alignment, crc)
                        seconds = 0.0
                    rows.append(tensor_row(info, shard, writer.stored_as(info, label), encoded, nbytes,
                                           seconds + time.perf_counter() - t0, first(encoded, info.dtype)))
                    index += 1
                    if bar is not None:
                        bar.update(info.nbytes)
                _start_writeback(f, written)
            f.flush()
            os.fsync(f.fileno())
            if shard_no + 1 < len(plan):  # the last shard's record would be removed unread
                records.write_json_atomic(state_path, dict(run=run_id, tensors=index, shards=shard_no + 1,
                                                           bytes=f.tell(), crc=crc, rows=rows))
        _write_padded(f, writer.extra_tensors(), alignment, crc)  # after every shard: a resume redoes them
        f.close()
    except BaseException:
        f.close()
        if not os.path.exists(state_path):
            os.remove(partial)  # no shard finished: nothing to resume from
        raise
    finally:
        if bar is not None:
            bar.close()
    paths.remove_entry(state_path)
    return rows, shards_done


def _file_header(writer, plan, partial):
    """The writer's header, with its scratch file in a fresh private folder beside OUT (no
    name there can be planted in advance)."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix=os.path.basename(partial) + ".", dir=os.path.dirname(partial))
    try:
        return writer.header([item for _, items in plan for item in items], os.path.join(scratch, "header"))
    finally:
        paths.remove_entry(scratch)


def _run_folder(source, writer, plan, partial, run_id, resume, progress, log, fold=None):
    """A folder run: one safetensors shard per source shard, each written as ``NAME.tmp``
    and renamed when complete; ``fold`` (``column_fold``, or None) transforms the tensors
    it touches first. Returns ``(rows, resumed_shards)``."""
    if resume and os.path.lexists(partial):
        paths.make_folder(partial)  # a planted symlink or file is refused, never followed
        records.check_folder_run(partial, run_id)
    else:
        paths.remove_entry(partial)
    paths.make_folder(partial)
    with paths.create_new(os.path.join(partial, records.RUN_FILE), "w") as f:
        json.dump(run_id, f, indent=1)

    names = {shard: _out_shard_name(source, shard) for shard, _ in plan}
    done = {}
    for shard, items in plan:
        done[shard] = records.finished_shard_rows(partial, names[shard], [i for i, _ in items]) if resume else None
        if resume and done[shard] is None and os.path.lexists(os.path.join(partial, names[shard])) and log:
            log(f"resume: {names[shard]} does not match its record; writing it again")
    total = sum(info.nbytes for _, items in plan for info, _ in items)
    skipped = sum(info.nbytes for shard, items in plan if done[shard] is not None for info, _ in items)
    bar = _progress(total, progress, initial=skipped)
    rows, resumed = [], 0
    weight_map = {}
    stream = _ShardStream(source, writer, fold)
    finished = 0
    try:
        for shard, items in plan:
            name = names[shard]
            for info, sel in items:
                for oname, _, _ in writer.specs(info, sel):
                    weight_map[oname] = name
            if done[shard] is not None:
                rows += [dict(row, resumed=True) for row in done[shard]]
                resumed += 1
                if log:
                    log(f"resume: keeping finished shard {name}")
                continue
            path = os.path.join(partial, name)
            paths.remove_entry(path)  # a shard without a valid record: not finished
            shard_rows, crc, nbytes = stream.write(path + ".tmp", name, items, bar)
            with paths.create_new(path + records.STATS_SUFFIX, "w") as f:
                json.dump(dict(rows=shard_rows, crc=crc, bytes=nbytes), f)
            os.replace(path + ".tmp", path)
            finished += 1
            rows += shard_rows
    except BaseException:
        if finished == 0 and resumed == 0:
            paths.remove_entry(partial)  # no shard finished: nothing to resume from
        raise
    finally:
        if bar is not None:
            bar.close()
    _write_aux(source, writer, partial, weight_map, len(plan), log)
    return rows, resumed


class _ShardStream:
    """Writes shards through a background ``StreamWriter``.

    Output buffers alternate between two sets: the writer thread writes one tensor's
    while the next is computed into the other. A safetensors source's unselected tensors
    are copied file to file by the kernel, never mapped here.
    """

    def __init__(self, source, writer, fold=None):
        self.writer = writer
        self.source = source
        self.fold = fold
        self.label = writer.options.label()
        self.work = quantizer.Scratch()  # the float32 working copy: never part of the outputs
        self.out_scratch = (quantizer.Scratch(), quantizer.Scratch())
        self.verbatim = source.kind == "safetensors" and writer.copies_verbatim
        self.parity = 0
        self.first = FirstOfKind()

    def write(self, tmp_path, name, items, bar):
        """Write shard ``items`` to ``tmp_path``; returns its report rows, CRC-32 and size.
        On any error the torn file is removed (a killed run's ``.tmp`` is rewritten by
        ``--resume``)."""
        writer = self.writer
        specs = [s for info, sel in items for s in writer.specs(info, sel)]
        sw = st.StreamWriter(tmp_path, specs, writer.metadata([i for i, s in items if s]), background=True)
        shard_rows = []
        last_use = [0, 0]  # per buffer set: the ticket of the last write reading it
        try:
            for info, selected in items:
                t0 = time.perf_counter()
                if not selected and self.verbatim and not (self.fold and self.fold.touches(info.name)):
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
        return shard_rows, sw.crc, os.path.getsize(tmp_path)

    def _tensor(self, sw, info, selected, name, last_use, t0):
        with column_fold.open_tensor(self.source, info, self.fold) as (array, dtype_name, measure):
            if selected:
                self.parity ^= 1
                sw.wait(last_use[self.parity])
            encoded = encode_tensor(self.writer, info, array, dtype_name, selected, self.work,
                                    self.out_scratch[self.parity], measure)
            nbytes = 0
            ticket = 0
            for oname, arr in encoded.outputs:
                ticket = sw.write(oname, arr)  # a copied tensor's map stays open until written
                nbytes += arr.nbytes
            if selected:
                last_use[self.parity] = ticket
        return tensor_row(info, name, self.writer.stored_as(info, self.label), encoded, nbytes,
                          time.perf_counter() - t0, self.first(encoded, info.dtype))


def _write_aux(source, writer, folder, weight_map, n_shards, log):
    if source.folder:
        _copy_side_files(source.folder, folder, _side_file_roots(source.folder), log, top=True)
    if source.config is not None:
        with paths.create_new(os.path.join(folder, "config.json"), "w") as f:
            json.dump(writer.config(source.config), f, indent=2)
    if n_shards > 1:
        total = 0
        for fname in set(weight_map.values()):
            tensors, _ = st.read_header(os.path.join(folder, fname))
            total += sum(t.nbytes for t in tensors.values())
        with paths.create_new(os.path.join(folder, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _side_file_roots(folder):
    """Where a side file's symlink may point: inside the source folder, or, for a Hugging
    Face cache snapshot (``models--x/snapshots/REV``), inside that model's cache folder
    (its ``blobs/``)."""
    folder = os.path.abspath(folder)
    roots = [os.path.realpath(folder)]
    if os.path.basename(os.path.dirname(folder)) == "snapshots":
        roots.append(os.path.realpath(os.path.dirname(os.path.dirname(folder))))
    return roots


_MAX_SIDE_DEPTH = 8


def _copy_side_files(src_dir, dst_dir, roots, log, top=False, depth=0):
    """Copy the files that are not weights (tokenizer, generation config, subfolders such
    as a sentence-transformers ``1_Pooling/``) into the output. Symlinks pointing outside
    the source (``roots``), FIFOs, devices and hidden entries are skipped."""
    for fname in sorted(os.listdir(src_dir)):
        full = os.path.join(src_dir, fname)
        if fname.startswith(".") or (top and (fname.endswith(_AUX_SKIP) or fname == "config.json")):
            continue
        if os.path.islink(full) and not any(paths.inside(os.path.realpath(full), r) for r in roots):
            if log:
                log(f"skipping {printable(full)}: a symlink pointing outside the source")
            continue
        if os.path.isdir(full):
            if depth < _MAX_SIDE_DEPTH:
                sub = os.path.join(dst_dir, fname)
                paths.make_folder(sub)
                _copy_side_files(full, sub, roots, log, depth=depth + 1)
        elif os.path.isfile(full):
            with open(full, "rb") as src, paths.create_new(os.path.join(dst_dir, fname)) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)


def _finish(partial, out, overwrite):
    """Put the finished output in place; an existing output is replaced only now."""
    if os.path.isdir(partial):
        records.drop_records(partial)
    old = None
    if os.path.lexists(out):
        if not overwrite:  # appeared while we ran
            raise InputError(f"output {printable(out)} appeared while quantizing; the result is left in "
                             f"{printable(partial)}")
        old = out + f".old-{os.getpid()}"
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        paths.remove_entry(old)
