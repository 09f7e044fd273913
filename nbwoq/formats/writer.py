"""The writer contract: what a file format implements, and the one per-tensor step.

A format is one module with one class deriving from ``FolderWriter`` (safetensors
shards in a folder: nbwoq, GPTQ) or ``FileWriter`` (one file: GGUF). The base classes
name every method the run calls; a format overrides what it needs and nothing is probed
with ``hasattr``. Buffers a writer may reuse (``Scratch``) are passed to it, never set
on it from outside.

``encode_tensor`` is the per-tensor step every output shape shares: quantize and
encode a selected tensor (in one pass where the writer can), else copy it.
"""

from typing import NamedTuple

import numpy as np

from nbwoq.formats import quantizer


class Encoded(NamedTuple):
    """What one tensor became: ``outputs`` ``[(name, array), ...]`` in write order, its
    clip (``None``, a ratio, or per-group min/mean/max), and the squared error and
    squared norm sums of what is stored (``0.0`` for a copied tensor); ``weighted``:
    ``(rtn_err, method_err, norm)`` importance-weighted sums where the method is not
    round to nearest (``quantizer.weighted_errors``); ``(reference_err, search_err, norm,
    "reference")`` for GGUF's ``--method search`` (its weights: ``_ggml_search``); else
    None."""

    outputs: list
    quantized: bool
    clip: object
    err: float
    norm: float
    weighted: object = None


class Encoding:
    """One tensor being encoded: its output arrays by role and its per-row squared error
    and squared norm of what is stored."""

    def __init__(self, info, arrays):
        self.info = info
        self.arrays = arrays
        rows = info.shape[0]
        self.err = np.zeros(rows, dtype=np.float64)
        self.norm = np.zeros(rows, dtype=np.float64)

    def error(self):
        return float(self.err.sum())

    def norm_sum(self):
        return float(self.norm.sum())


class Writer:
    """What every format implements. ``options`` are the run's ``QuantOptions``;
    ``source`` the opened ``Source`` (its ``kind``, ``config`` and ``folder``)."""

    #: One file (``FileWriter``) or a folder of safetensors shards (``FolderWriter``).
    output_is_file = False

    #: Added to the error for stored values that are not finite (``quantizer.stored_error``).
    overflow_hint = "; --format nbwoq stores float32 scales"

    def __init__(self, options, source):
        self.options = options
        self.source = source

    def select(self, info, chosen):
        """Whether tensor ``info`` is quantized, given what the options chose (``chosen``).
        A format with its own rules (GGUF's file types) overrides this."""
        return chosen

    def stored_as(self, info, label):
        """The report's name for how tensor ``info`` is stored (``label``: the run's)."""
        return label

    def check_tensor(self, info, selected):
        """Raise ``InputError`` when tensor ``info`` cannot be stored as planned. Called for
        every tensor before anything is written."""

    def one_pass(self):
        """True when ``quantize_encode`` is used for selected tensors instead of
        ``quantizer.quantize`` followed by ``encode``."""
        return False

    def takes_blocks(self, info, selected):
        """True when tensor ``info``, stored as GGML blocks, is quantized and encoded from
        those blocks by ``requantize`` (with other such tensors) rather than decoded to
        float32 and handed to ``encode_tensor``."""
        return False

    def requantize(self, infos, data, base, scratch):
        """Quantize and encode the tensors ``infos`` (each ``takes_blocks``) together, from
        ``data``, the source's bytes from file offset ``base`` on; returns per tensor
        ``(outputs, err_sum, norm_sum)``. The outputs may be ``scratch`` buffers, valid
        until ``scratch``'s next use for ``requantize``."""
        raise NotImplementedError(f"{type(self).__name__} re-encodes no blocks")

    def copies_raw(self, info):
        """True when tensor ``info``, if not selected, is stored as the source's bytes, so
        the run may stream them from the source file without mapping or decoding them."""
        return False

    def quantize_encode(self, info, array, dtype_name, scratch):
        """Quantize and encode in one pass; returns ``(outputs, err_sum, norm_sum)``, or
        with a fourth item, ``Encoded.weighted``."""
        raise NotImplementedError(f"{type(self).__name__} has no one-pass path")

    def begin(self, info, scratch):
        """Start encoding tensor ``info``: returns an ``Encoding`` whose output arrays (in
        ``scratch``, valid until its next use) ``encode_rows`` fills block by block."""
        raise NotImplementedError

    def encode_rows(self, enc, start, array, dtype_name, q):
        """Lay out rows ``start : start + len(array)``: their source values ``array`` and
        codes ``q`` (a ``quantizer.Quantized`` of just these rows), measuring the squared
        error of what the file stores into ``enc.err`` / ``enc.norm``."""
        raise NotImplementedError

    def finish(self, enc):
        """``[(name, array), ...]``: the outputs of a fully encoded tensor, in write order."""
        raise NotImplementedError

    def encode(self, info, array, dtype_name, q, scratch):
        """The whole tensor at once: ``(outputs, err_sum, norm_sum)``."""
        enc = self.begin(info, scratch)
        self.encode_rows(enc, 0, array, dtype_name, q)
        return self.finish(enc), enc.error(), enc.norm_sum()

    def copy(self, info, array, dtype_name):
        """``[(name, array)]`` storing an unselected tensor."""
        raise NotImplementedError


class FolderWriter(Writer):
    """A folder of safetensors shards, one per source shard."""

    #: Unselected tensors are stored with the source's dtype and bytes, so a
    #: safetensors source's bytes may be copied file to file without being mapped.
    copies_verbatim = False

    def specs(self, info, selected):
        """``[(name, dtype_name, shape), ...]`` that tensor ``info`` is stored as."""
        raise NotImplementedError

    def metadata(self, selected_infos):
        """The shard header's ``__metadata__`` (str -> str) for its selected tensors."""
        return {}

    def config(self, config):
        """``config.json`` of the output, from the source's."""
        return config


class FileWriter(Writer):
    """One file: a header, then every tensor's data in plan order, each padded to the
    header's alignment."""

    output_is_file = True
    #: Label of the stored type, for the report.
    type_name = ""

    def header(self, plan, scratch_path):
        """``(header_bytes, alignment)`` for ``plan`` = ``[(info, selected), ...]``, padded
        to the alignment. ``scratch_path`` is a file name the writer may use and remove."""
        raise NotImplementedError

    def extra_tensors(self):
        """``[(name, array), ...]``: tensors the file holds that the source does not (GGUF:
        llama.cpp's ``rope_freqs.weight`` for Llama 3 rope scaling), stored after the
        plan's tensors, as they are, and listed in ``header``'s tensor infos."""
        return []


def encode_tensor(writer, info, array, dtype_name, selected, work, scratch, measure=None):
    """The per-tensor step: quantize and encode tensor ``info`` when ``selected``, else
    copy it. ``work`` holds the float32 working copy, ``scratch`` the outputs.

    The clip search reads the source in place; the codes are made and encoded in blocks
    of rows (``quantizer.row_blocks``), so the float32 working copy is one block, not the
    tensor. Returns an ``Encoded``. Non-finite weights raise ``InputError`` naming the
    tensor, and so do stored values that overflow the output's float16
    (``quantizer.stored_error``). ``measure`` ``(start, stop, q) -> (rtn_err, method_err, norm)`` replaces
    ``quantizer.weighted_errors`` for a tensor whose ``array`` is not its original
    (``column_fold``: the report measures against the original).
    """
    if not selected:
        return Encoded(writer.copy(info, array, dtype_name), False, None, 0.0, 0.0)
    if writer.one_pass():
        outputs, err, norm, *weighted = writer.quantize_encode(info, array, dtype_name, scratch)
        err = quantizer.stored_error(info.name, err, writer.overflow_hint)
        return Encoded(outputs, True, None, err, norm,
                       weighted[0] if weighted else None)
    options = writer.options
    quantile, clip = quantizer.clip_ratios(array, dtype_name, options, info.name)
    enc = writer.begin(info, scratch)
    weighted = [0.0, 0.0, 0.0] if quantizer.compares_with_rtn(options) else None
    for start, stop in quantizer.row_blocks(*array.shape):
        rows = array[start:stop]
        q = quantizer.quantize_rows(rows, dtype_name, options, quantizer.quantile_rows(quantile, start, stop),
                                    info.name, work)
        if weighted is not None:
            part = (quantizer.weighted_errors(rows, dtype_name, options, q) if measure is None
                    else measure(start, stop, q))
            weighted = [a + b for a, b in zip(weighted, part)]
        writer.encode_rows(enc, start, rows, dtype_name, q)
    err = quantizer.stored_error(info.name, enc.error(), writer.overflow_hint)
    return Encoded(writer.finish(enc), True, clip, err, enc.norm_sum(),
                   None if weighted is None else tuple(weighted))
