"""Packing codes into the bytes of each export format, and reading them back.

The core (``nbwoq.quant_tensor(..., return_int=True)``) decides every code and scale;
this module only lays them out. Each packing kernel also measures the error of what
it stores, decoding the stored value exactly as the consumer will (float16 scales for
GGUF and GPTQ) against the source weight, so the report states the error of the file,
not of an idealised fake-quant.

Layouts
-------
nbwoq
    Per row, codes shifted to unsigned (``u = code - qmin``) in slots of 1, 2, 4, 8 or
    16 bits; slots below a byte fill it from the low bits (``code c`` of a row sits in
    byte ``c // per_byte`` at bit ``(c % per_byte) * slot``), wider slots are
    little-endian. Rows start on a byte boundary.
GGUF Q4_0 / Q4_1 / Q8_0
    Blocks of 32 along the row: float16 ``d`` (Q4_1: then float16 ``m``), then the
    codes. In 4-bit blocks byte ``j`` holds value ``j`` (low nibble) and ``j + 16``
    (high nibble). Values are ``d * (q - 8)``, ``d * q + m`` and ``d * q``.
GPTQ
    ``qweight[i, o]`` (int32) holds the unsigned codes of inputs ``i*per .. i*per+per-1``
    of output ``o``, lowest bits first (``per = 32 // bits``).
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode
from nbwoq._config import PARALLEL, REDUCTION, njit, njit_kernel
from nbwoq._integer import int_range
from nbwoq._kernels_int import group_minmax, int_code, int_group_params
from nbwoq._llvm import half_bits_to_float

Q4_0, Q4_1, Q8_0 = 0, 1, 2
#: GGUF block kinds -> (values per block, bytes per block).
GGUF_BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34)}


@njit_kernel
def decode_rows(src, out):
    """``out[r, c] = float32(src[r, c])`` for a storage view ``src`` (exact widening)."""
    rows, cols = src.shape
    for r in prange(rows):
        s = src[r]
        o = out[r]
        for c in range(cols):
            o[c] = decode(s[c])


def slot_bits(bits):
    """Smallest slot of 1, 2, 4, 8 or 16 bits holding a ``bits``-bit code."""
    for slot in (1, 2, 4, 8, 16):
        if bits <= slot:
            return slot
    raise ValueError(f"bits must be at most 16, got {bits}")


def code_layout(bits, scheme, full_range, codebook):
    """``(qmin, qmax, slot)`` of stored codes: the one rule every writer and reader uses.

    Integer codes keep the core's range (``int_range``); codebook codes are the signed
    ``INT_MAPPING`` codes -8..7 in 4-bit slots. Codes are stored as ``code - qmin``.
    """
    if codebook:
        return -8, 7, 4
    qmin, qmax, _ = int_range(bits, scheme == "sym", full_range)
    return qmin, qmax, slot_bits(max(qmax - qmin, 1).bit_length())


def packed_cols(cols, slot):
    """Bytes per packed row."""
    return -(-cols * slot // 8)


@register_jitable(inline="always")
def _stored_value(u, g, srow_scale, zrow, qmin, lut, use_lut):
    """Dequantized value of unsigned code ``u`` in group ``g`` (the core's order of operations)."""
    if use_lut:
        return lut[np.int64(u)] * srow_scale[g]
    return (u + qmin - zrow[g]) * srow_scale[g]


# Packing decides nothing (the codes are given); only the error sums need reassociation
# to vectorize, which changes their last bits, never a stored byte. They live in their
# own functions: fastmath flags sit on each instruction, so a kernel that calls them
# (and decides codes) keeps its own exact arithmetic.
_measure = njit(**REDUCTION)
_measure_kernel = njit(**dict(REDUCTION, parallel=PARALLEL))


@_measure
def _int_error(seg, cseg, z, sc):
    """Sums of squared error and squared value of one group: ``x - (code - z) * sc``,
    the core's dequant in its order and type. Summed in the compute type (a group: ample
    for a report, and twice float64's speed); a sum that overflows (a float32 square past
    1.8e19) is summed again in float64, so a finite weight's report stays finite."""
    eg = sc - sc
    ng = eg
    for i in range(seg.shape[0]):
        x = decode(seg[i])
        d = x - (cseg[i] - z) * sc
        eg += d * d
        ng += x * x
    if np.isinf(eg) or np.isinf(ng):
        eg = np.float64(0)
        ng = eg
        for i in range(seg.shape[0]):
            x = decode(seg[i])
            d = np.float64(x - (cseg[i] - z) * sc)
            x64 = np.float64(x)
            eg += d * d
            ng += x64 * x64
    return np.float64(eg), np.float64(ng)


@_measure
def _lut_error(seg, cseg, qmin, lut, sc):
    """As ``_int_error`` for codebook codes: ``x - lut[code - qmin] * sc``."""
    eg = sc - sc
    ng = eg
    for i in range(seg.shape[0]):
        x = decode(seg[i])
        d = x - lut[np.int64(cseg[i] - qmin)] * sc
        eg += d * d
        ng += x * x
    if np.isinf(eg) or np.isinf(ng):
        eg = np.float64(0)
        ng = eg
        for i in range(seg.shape[0]):
            x = decode(seg[i])
            d = np.float64(x - lut[np.int64(cseg[i] - qmin)] * sc)
            x64 = np.float64(x)
            eg += d * d
            ng += x64 * x64
    return np.float64(eg), np.float64(ng)


@register_jitable
def _pack_row(crow, qmin, slot, orow):
    """Write the codes ``crow`` (float, signed) of one row into ``orow`` as ``code - qmin``
    in ``slot``-bit slots (the nbwoq layout of the module docstring)."""
    cols = crow.shape[0]
    if slot == 4:  # the common case, written out so that it vectorizes
        for b in range(cols // 2):
            lo = np.int32(crow[2 * b] - qmin)
            hi = np.int32(crow[2 * b + 1] - qmin)
            orow[b] = np.uint8(lo | (hi << 4))
        if cols % 2:
            orow[cols // 2] = np.uint8(np.int32(crow[cols - 1] - qmin))
    elif slot < 8:
        per = 8 // slot
        full = cols // per
        for b in range(full):
            v = np.int64(0)
            for k in range(per):
                v |= np.int64(crow[b * per + k] - qmin) << (k * slot)
            orow[b] = np.uint8(v)
        if full * per < cols:
            v = np.int64(0)
            for c in range(full * per, cols):
                v |= np.int64(crow[c] - qmin) << ((c - full * per) * slot)
            orow[full] = np.uint8(v)
    else:
        nb = slot // 8
        for c in range(cols):
            ui = np.int64(crow[c] - qmin)
            for k in range(nb):
                orow[c * nb + k] = np.uint8((ui >> (8 * k)) & 255)


@_measure_kernel
def pack_rows(codes, src, scale, zp, size, qmin, slot, lut, use_lut, do_pack, out, err, norm):
    """Pack the codes of ``codes`` (float, as the core returns them) into ``out``.

    ``src`` is the source weight's storage view; ``err[r]``/``norm[r]`` receive the row's
    sums of squared error and squared value (float64) of the stored values:
    ``(code - zp) * scale`` for integers, ``lut[code - qmin] * scale`` for codebooks.
    ``zp`` may be (rows, 1) of zeros for symmetric codes. ``do_pack=False`` only measures.
    """
    rows, cols = codes.shape
    for r in prange(rows):
        crow = codes[r]
        srow = src[r]
        e = np.float64(0)
        n = np.float64(0)
        g = 0
        for start in range(0, cols, size):
            stop = min(start + size, cols)
            if use_lut:
                eg, ng = _lut_error(srow[start:stop], crow[start:stop], qmin, lut, scale[r, g])
            else:
                eg, ng = _int_error(srow[start:stop], crow[start:stop], zp[r, g], scale[r, g])
            e += np.float64(eg)
            n += np.float64(ng)
            g += 1
        err[r] = e
        norm[r] = n
        if do_pack:
            _pack_row(crow, qmin, slot, out[r])


#: Rows per task of ``quant_pack_int``: one code buffer is allocated per task.
_ROW_BLOCK = 16


@njit_kernel
def quant_pack_int(src, size, n_groups, quantile, qmin, qmax, divisor, sym, full_range, slot,
                   scale_out, zp_out, keep_zp, out, err, norm, bad):
    """Quantize the storage view ``src`` with the core's integer arithmetic and pack it.

    One pass per row, straight from the source (float32, or a float16/bfloat16 storage
    view): each group's min/max, scale and zero point (``_kernels_int``'s helpers, the
    ones ``quant_int`` uses, so the codes are the core's bit for bit), its codes into a
    row buffer, its error sums; then the row is packed into ``out``. ``scale_out`` and
    ``zp_out`` (rows, n_groups) receive the parameters (``zp_out`` only with ``keep_zp``,
    cast to its dtype). A row holding NaN or Inf is flagged in ``bad`` and not packed:
    the caller refuses the tensor.
    """
    rows, cols = src.shape
    zero = divisor - divisor
    one = divisor / divisor
    per_group = quantile.shape[0] != 1 or quantile.shape[1] != 1
    for blk in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        codes = np.empty(cols, dtype=np.float32)
        for r in range(blk * _ROW_BLOCK, min(rows, (blk + 1) * _ROW_BLOCK)):
            srow = src[r]
            e = np.float64(0)
            n = np.float64(0)
            ok = True
            for g in range(n_groups):
                start = g * size
                stop = min(start + size, cols)
                seg = srow[start:stop]
                # x - x is 0 for finite x and NaN for NaN and Inf. This OR vectorizes and
                # reads the group while it sits in L1; it clears the data for the fast
                # (nnan) min/max, which would be undefined on a NaN.
                nonfinite = False
                for i in range(seg.shape[0]):
                    x = decode(seg[i])
                    nonfinite |= (x - x) != zero
                if nonfinite:
                    ok = False
                    break
                lo, hi = group_minmax(seg, True)
                q = quantile[r, g] if per_group else quantile[0, 0]
                scale, zp = int_group_params(lo, hi, q, divisor, sym, full_range, zero, one)
                scale_out[r, g] = scale
                if keep_zp:
                    zp_out[r, g] = zp
                cseg = codes[start:stop]
                for i in range(seg.shape[0]):
                    cseg[i] = int_code(decode(seg[i]), scale, zp, qmin, qmax)
                eg, ng = _int_error(seg, cseg, zp, scale)
                e += np.float64(eg)
                n += np.float64(ng)
            bad[r] = not ok
            err[r] = e
            norm[r] = n
            if ok:
                _pack_row(codes, qmin, slot, out[r])


@njit_kernel
def unpack_rows(packed, scale, zp, size, qmin, slot, lut, use_lut, out):
    """Inverse of ``pack_rows``: the stored values, written into ``out`` (float32)."""
    rows, cols = out.shape
    per = 8 // slot if slot < 8 else 1
    nb = slot // 8
    mask = (1 << slot) - 1
    for r in prange(rows):
        prow = packed[r]
        srow_scale = scale[r]
        zrow = zp[r]
        orow = out[r]
        g = 0
        for start in range(0, cols, size):
            stop = min(start + size, cols)
            for c in range(start, stop):
                if slot < 8:
                    ui = (np.int64(prow[c // per]) >> ((c % per) * slot)) & mask
                else:
                    ui = np.int64(0)
                    for k in range(nb):
                        ui |= np.int64(prow[c * nb + k]) << (8 * k)
                orow[c] = _stored_value(np.float32(ui), g, srow_scale, zrow, qmin, lut, use_lut)
            g += 1


@njit_kernel
def pack_gguf_rows(codes, src, d16, m16, kind, out, err, norm):
    """Write GGUF blocks (Q4_0, Q4_1 or Q8_0) of every row of ``codes`` into ``out``.

    ``codes`` hold the core's codes: -8..7 (Q4_0), 0..15 (Q4_1), -128..127 (Q8_0).
    ``d16``/``m16`` are the float16 bit patterns of each block's scale and minimum.
    Error sums use the engine's decode: ``d * (q - 8)``, ``d * q + m``, ``d * q``.
    """
    rows, cols = codes.shape
    nblocks = cols // 32
    bsize = 34 if kind == Q8_0 else (20 if kind == Q4_1 else 18)
    for r in prange(rows):
        crow = codes[r]
        srow = src[r]
        drow = d16[r]
        mrow = m16[r]
        orow = out[r]
        e = np.float64(0)
        n = np.float64(0)
        for b in range(nblocks):
            base = b * bsize
            dbits = drow[b]
            d = half_bits_to_float(dbits)
            orow[base] = np.uint8(dbits & 255)
            orow[base + 1] = np.uint8(dbits >> 8)
            m = d - d
            qs = base + 2
            if kind == Q4_1:
                mbits = mrow[b]
                m = half_bits_to_float(mbits)
                orow[base + 2] = np.uint8(mbits & 255)
                orow[base + 3] = np.uint8(mbits >> 8)
                qs = base + 4
            c0 = b * 32
            if kind == Q8_0:
                for j in range(32):
                    qi = np.int64(crow[c0 + j])
                    orow[qs + j] = np.uint8(qi & 255)
                    x = np.float64(decode(srow[c0 + j]))
                    dd = x - np.float64(np.float32(qi) * d)
                    e += dd * dd
                    n += x * x
            else:
                off = 8 if kind == Q4_0 else 0
                for j in range(16):
                    lo = np.int64(crow[c0 + j]) + off
                    hi = np.int64(crow[c0 + j + 16]) + off
                    orow[qs + j] = np.uint8(lo | (hi << 4))
                for j in range(32):
                    q = np.int64(crow[c0 + j]) + off
                    if kind == Q4_0:
                        v = np.float32(q - 8) * d
                    else:
                        v = np.float32(q) * d + m
                    x = np.float64(decode(srow[c0 + j]))
                    dd = x - np.float64(v)
                    e += dd * dd
                    n += x * x
        err[r] = e
        norm[r] = n


@njit_kernel
def pack_gptq_rows(codes, qmin, bits, out):
    """``out[o, i]`` (uint32) = the unsigned codes ``codes[o, i*per + k] - qmin``, k = 0..per-1,
    at bits ``k*bits``; the transpose of GPTQ's ``qweight``."""
    rows, cols = codes.shape
    per = 32 // bits
    for r in prange(rows):
        crow = codes[r]
        orow = out[r]
        for i in range(cols // per):
            v = np.uint32(0)
            for k in range(per):
                v |= np.uint32(np.int64(crow[i * per + k] - qmin)) << np.uint32(k * bits)
            orow[i] = v


def pack_columns_u32(values, bits):
    """Pack the unsigned integers ``values`` (n, m) along axis 1 into int32 (n, m * bits // 32),
    lowest bits first (GPTQ's ``qzeros``)."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(values.shape[0], -1, per)
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))[None, None, :]
    return np.bitwise_or.reduce(v << shifts, axis=2).view(np.int32)


def codebook_lut(levels, codes, qmin, slot):
    """float32 level of each unsigned stored code ``code - qmin`` (NaN where unused)."""
    lut = np.full(1 << slot, np.nan, dtype=np.float32)
    for level, code in zip(levels, codes):
        lut[code - qmin] = np.float32(level)
    return lut
