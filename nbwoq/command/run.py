"""One quantization run: plan, stream every tensor through the core, write, report.

Atomicity: output goes to ``OUT.partial`` (a folder, or a file for GGUF) and is renamed
to ``OUT`` only when everything is written. Inside a partial folder each shard is
written as ``NAME.tmp`` and renamed when complete, next to a ``NAME.stats.json`` with
its tensors' report rows, so ``resume=True`` keeps finished shards (after checking that
the settings and the source are the same) and redoes only the rest.
"""

import json
import os
import shutil
import time

import numpy as np

import nbwoq
from nbwoq.formats import safetensors_io as st
from nbwoq.formats import quantizer
from nbwoq.formats.gguf_format import GgufWriter
from nbwoq.formats.gptq_format import GptqWriter
from nbwoq.formats.nbwoq_format import NbwoqWriter
from nbwoq.formats.source import INDEX_NAME, InputError, Source

FORMATS = {"nbwoq": NbwoqWriter, "gguf": GgufWriter, "gptq": GptqWriter}
RUN_FILE = "nbwoq-run.json"
PARTIAL = ".partial"
# Files of a model folder that are not weights; copied along (config.json may be rewritten).
_AUX_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", INDEX_NAME)


def peak_rss_bytes():
    """Peak resident memory of this process so far.

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this program's own memory.
    (``getrusage``'s ``ru_maxrss`` survives ``exec``: a command started from a big
    process, such as a Python with a model loaded, would report its parent's size.)
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _progress(total, enabled, initial=0):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the CLI
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc="quantizing", dynamic_ncols=True, leave=False)


def _row(info, shard, label, q, err, norm, bytes_out, seconds):
    return dict(name=info.name, shape=list(info.shape), dtype=info.dtype, format=label,
                clip=None if q is None else q.clip, rel_mse=(err / norm if norm > 0 else 0.0) if q else None,
                seconds=seconds, bytes_in=info.nbytes, bytes_out=bytes_out, shard=shard)


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
        nbwoq.set_num_threads(threads)
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
            if hasattr(writer, "check_tensor"):
                writer.check_tensor(info, selected)
            items.append((info, selected))
        plan.append((shard, items))
    n_selected = sum(sel for _, items in plan for _, sel in items)
    if n_selected == 0:
        raise InputError("no tensor selected for quantization (check --include/--exclude)")

    partial = out + PARTIAL
    run_id = dict(nbwoq=nbwoq.__version__, format=fmt, options=options.as_dict(), source=source.fingerprint())
    if writer.output_is_file:
        rows, resumed = _run_file(source, writer, plan, options, partial, run_id, resume, progress, log)
    else:
        rows, resumed = _run_folder(source, writer, plan, options, partial, run_id, resume, progress, log)
    _finish(partial, out, overwrite)
    wall = time.perf_counter() - t_start
    report = _report(rows, wall, fmt, options, source, out, resumed)
    if fmt == "gguf":
        report["summary"]["label"] = f"{writer.type_name}: {options.label()}"
    return report


def _file_state(partial):
    """Progress record of a single-file (GGUF) run: ``OUT.partial.run.json``."""
    return partial + ".run.json"


def _resumable(partial, run_id, header):
    """The finished part of an earlier single-file run, or None:
    ``(n_tensors, n_shards, rows, n_bytes)``.

    It is kept only when that run had the same settings and source, its file starts with
    the very header this run writes, and holds every byte of the tensors it recorded.
    Other settings or another source raise ``InputError``, as for a folder.
    """
    try:
        with open(_file_state(partial)) as f:
            state = json.load(f)
        with open(partial, "rb") as f:
            same_header = f.read(len(header)) == header
        size = os.path.getsize(partial)
    except (OSError, ValueError):
        return None
    if state.get("run") != run_id:
        raise InputError(f"cannot resume {partial!r}: it was started with other settings or another source "
                         "(run without --resume to start over)")
    if not same_header or size < state.get("bytes", float("inf")):
        return None
    return state["tensors"], state["shards"], state["rows"], state["bytes"]


def _gguf_header(writer, plan, path):
    """The GGUF header (key/values and tensor infos) gguf-py writes for this plan, padded
    to the data alignment, and that alignment. ``path`` is a scratch file."""
    import gguf

    gw = gguf.GGUFWriter(path, writer.arch)
    try:
        for _, items in plan:
            for info, selected in items:
                writer.tensor_info(gw, info, selected)
        writer.metadata(gw)
        gw.write_header_to_file()
        gw.write_kv_data_to_file()
        gw.write_ti_data_to_file()
        alignment = gw.data_alignment
        gw.close()
        with open(path, "rb") as f:
            header = f.read()
    finally:
        gw.close()
        if os.path.exists(path):
            os.remove(path)
    return header + bytes(-len(header) % alignment), alignment


def _write_tensor(f, data, alignment):
    """One tensor's bytes and the zeros that pad them to ``alignment``; returns its size."""
    raw = np.ascontiguousarray(data)
    f.write(memoryview(raw.reshape(-1)).cast("B"))
    f.write(bytes(-raw.nbytes % alignment))
    return raw.nbytes


def _run_file(source, writer, plan, options, partial, run_id, resume, progress, log):
    """A single-file (GGUF) run, written in place as ``OUT.partial``.

    gguf-py writes the header (``_gguf_header``); the tensor data follows in plan order,
    each tensor padded to the alignment as gguf-py pads it. After each source shard the
    file is fsynced and ``OUT.partial.run.json`` records how many tensors and bytes it
    holds, with their report rows. ``resume`` cuts the file back to those bytes and
    carries on from the next shard: nothing is copied or quantized twice.
    Returns ``(rows, resumed_shards)``.
    """
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    header, alignment = _gguf_header(writer, plan, partial + ".header")
    done = _resumable(partial, run_id, header) if resume and os.path.exists(partial) else None
    if resume and os.path.exists(partial) and done is None and log:
        log(f"resume: {os.path.basename(partial)} does not hold what its record says; starting it over")
    if done is None and os.path.exists(_file_state(partial)):
        os.remove(_file_state(partial))
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
    try:
        scratch = quantizer.Scratch()
        label = f"{writer.type_name}"
        index = n_done
        for shard_no, (shard, items) in enumerate(plan):
            if shard_no < shards_done:
                continue
            for info, selected in items:
                t0 = time.perf_counter()
                with source.open(info) as (array, dtype_name):
                    if selected:
                        q = quantizer.quantize(array, dtype_name, options, info.name, scratch)
                        data, err, norm = writer.encode(info, array, dtype_name, q)
                    else:
                        q, err, norm = None, 0.0, 0.0
                        data = writer.copy(info, array, dtype_name)
                    nbytes = _write_tensor(f, data, alignment)
                rows.append(_row(info, shard, label if selected else f"copy {info.dtype}", q, err, norm,
                                 nbytes, time.perf_counter() - t0))
                index += 1
                if bar is not None:
                    bar.update(info.nbytes)
            f.flush()
            os.fsync(f.fileno())
            _write_json_atomic(_file_state(partial), dict(run=run_id, tensors=index, shards=shard_no + 1,
                                                           bytes=f.tell(), rows=rows))
        f.close()
    except BaseException:
        f.close()
        if not os.path.exists(_file_state(partial)):
            os.remove(partial)  # no shard finished: nothing to resume from
        raise
    finally:
        if bar is not None:
            bar.close()
    os.remove(_file_state(partial))
    return rows, shards_done


def _write_json_atomic(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _shard_done(folder, name):
    path = os.path.join(folder, name)
    stats = path + ".stats.json"
    if not (os.path.exists(path) and os.path.exists(stats)):
        return None
    try:
        st.read_header(path)
        with open(stats) as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


def _run_folder(source, writer, plan, options, partial, run_id, resume, progress, log):
    run_path = os.path.join(partial, RUN_FILE)
    if os.path.isdir(partial) and resume:
        try:
            with open(run_path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous != run_id:
            raise InputError(f"cannot resume {partial!r}: it was started with other settings or another source "
                             "(run without --resume to start over)")
    elif os.path.exists(partial):
        shutil.rmtree(partial) if os.path.isdir(partial) else os.remove(partial)
    os.makedirs(partial, exist_ok=True)
    with open(run_path, "w") as f:
        json.dump(run_id, f, indent=1)

    rows, resumed = [], 0
    done = {}
    for shard, _ in plan:
        name = _out_shard_name(source, shard)
        done[shard] = _shard_done(partial, name) if resume else None
    total = sum(info.nbytes for _, items in plan for info, _ in items)
    skipped = sum(info.nbytes for shard, items in plan if done[shard] is not None for info, _ in items)
    bar = _progress(total, progress, initial=skipped)
    label = options.label()
    work = quantizer.Scratch()  # the general path's float32 copy: never part of the outputs
    one_pass = hasattr(writer, "quantize_encode") and quantizer.one_pass(options)
    verbatim = source.kind == "safetensors" and getattr(writer, "copies_verbatim", False)
    # Output buffers alternate between two sets: the writer thread writes one tensor's
    # while the next is computed into the other.
    out_scratch = (quantizer.Scratch(), quantizer.Scratch())
    parity = 0
    weight_map = {}
    for shard, items in plan:
        name = _out_shard_name(source, shard)
        specs = [s for info, sel in items for s in writer.specs(info, sel)]
        for oname, _, _ in specs:
            weight_map[oname] = name
        if done[shard] is not None:
            rows += done[shard]
            resumed += 1
            if log:
                log(f"resume: keeping finished shard {name}")
            continue
        path = os.path.join(partial, name)
        sw = st.StreamWriter(path + ".tmp", specs, writer.metadata([i for i, s in items if s]), background=True)
        shard_rows = []
        last_use = [0, 0]  # per buffer set: the ticket of the last write reading it
        ticket = 0
        try:
            for info, selected in items:
                t0 = time.perf_counter()
                if not selected and verbatim:
                    # stored unchanged: the kernel copies the bytes file to file, never mapped here
                    ticket = sw.copy_range(info.name, info.path, info.start, info.nbytes)
                    shard_rows.append(_row(info, name, f"copy {info.dtype}", None, 0.0, 0.0, info.nbytes,
                                           time.perf_counter() - t0))
                    if bar is not None:
                        bar.update(info.nbytes)
                    continue
                with source.open(info) as (array, dtype_name):
                    if selected:
                        parity ^= 1
                        sw.wait(last_use[parity])
                    if selected and one_pass:
                        outputs, err, norm, seconds = writer.quantize_encode(info, array, dtype_name,
                                                                             out_scratch[parity])
                        q = quantizer.Quantized(None, None, None, None, seconds)
                    elif selected:
                        writer.scratch = out_scratch[parity]
                        q = quantizer.quantize(array, dtype_name, options, info.name, work)
                        outputs, err, norm = writer.encode(info, array, dtype_name, q)
                        q.codes = None
                    else:
                        q, err, norm = None, 0.0, 0.0
                        outputs = writer.copy(info, array, dtype_name)
                    nbytes = 0
                    for oname, arr in outputs:
                        ticket = sw.write(oname, arr)  # a copied tensor's map stays open until written
                        nbytes += arr.nbytes
                    del outputs
                    if selected:
                        last_use[parity] = ticket
                shard_rows.append(_row(info, name, label if selected else f"copy {info.dtype}", q, err, norm,
                                       nbytes, time.perf_counter() - t0))
                if bar is not None:
                    bar.update(info.nbytes)
            sw.close()
        except BaseException:
            sw.abort()
            os.remove(path + ".tmp")  # torn; a killed run's .tmp is ignored and rewritten by --resume
            if bar is not None:
                bar.close()
            raise
        with open(path + ".stats.json", "w") as f:
            json.dump(shard_rows, f)
        os.replace(path + ".tmp", path)
        rows += shard_rows
    if bar is not None:
        bar.close()
    _write_aux(source, writer, partial, weight_map, len(plan))
    return rows, resumed


def _write_aux(source, writer, folder, weight_map, n_shards):
    if source.folder:
        for fname in sorted(os.listdir(source.folder)):
            full = os.path.join(source.folder, fname)
            if os.path.isfile(full) and not fname.endswith(_AUX_SKIP) and fname != "config.json":
                shutil.copyfile(full, os.path.join(folder, fname))
    if source.config is not None:
        config = writer.config(source.config) if hasattr(writer, "config") else source.config
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
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
        for fname in os.listdir(partial):
            if fname.endswith(".stats.json") or fname == RUN_FILE:
                os.remove(os.path.join(partial, fname))
    old = None
    if os.path.exists(out):
        if not overwrite:  # appeared while we ran
            raise InputError(f"output {out!r} appeared while quantizing; the result is left in {partial!r}")
        old = out + f".old-{os.getpid()}"
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)


def _report(rows, wall, fmt, options, source, out, resumed):
    quantized = [r for r in rows if r["rel_mse"] is not None]
    bytes_in = sum(r["bytes_in"] for r in rows)
    params_q = sum(int(np.prod(r["shape"])) for r in quantized)
    norm_weighted = [r["rel_mse"] for r in quantized]
    summary = dict(
        source=source.path, output=out, format=fmt, settings=options.as_dict(), label=options.label(),
        tensors=len(rows), quantized=len(quantized), copied=len(rows) - len(quantized),
        quantized_params=params_q, bytes_in=bytes_in, bytes_out=sum(r["bytes_out"] for r in rows),
        seconds=wall, throughput_bytes_per_s=bytes_in / wall if wall > 0 else None,
        quantized_params_per_s=params_q / wall if wall > 0 else None,
        mean_rel_mse=float(np.mean(norm_weighted)) if norm_weighted else None,
        max_rel_mse=float(np.max(norm_weighted)) if norm_weighted else None,
        peak_rss_bytes=peak_rss_bytes(), resumed_shards=resumed,
        nbwoq=nbwoq.__version__,
    )
    return dict(summary=summary, tensors=sorted(rows, key=lambda r: -(r["rel_mse"] or -1.0)))


def quantize_arrays(arrays, path, bits=4, group_size=128, scheme="asym", dtype="int", full_range=False):
    """Quantize a dict of 2-D float arrays into one nbwoq-format file (no checkpoint needed).

    Every array is quantized (names are kept); see ``nbwoq.load`` for reading it back.
    """
    import tempfile

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src.safetensors")
        st.save_file(src, [(k, names[v.dtype], v) for k, v in arrays.items()])
        options = quantizer.QuantOptions(bits, group_size, scheme, dtype, full_range, include=tuple(arrays))
        folder = os.path.join(tmp, "out")
        quantize_checkpoint(src, folder, options, "nbwoq")
        shutil.move(os.path.join(folder, "src.safetensors"), os.fspath(path))
