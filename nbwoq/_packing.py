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

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable

from nbwoq._codecs import decode
from nbwoq._config import PARALLEL, REDUCTION, njit_kernel
from nbwoq._llvm import half_bits_to_float

Q4_0, Q4_1, Q8_0 = 0, 1, 2
#: GGUF block kinds -> (values per block, bytes per block).
GGUF_BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34)}


def storage_view(array, dtype_name):
    """The view the kernels decode: float32 as is, float16 as uint16, bfloat16 as int16."""
    if dtype_name == "F32":
        return array
    if dtype_name == "F16":
        return array.view(np.uint16)
    if dtype_name == "BF16":
        return array.view(np.int16)
    raise TypeError(f"cannot decode dtype {dtype_name}")


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
# to vectorize, which changes their last bits, never a stored byte.
_measure_kernel = numba.njit(**dict(REDUCTION, parallel=PARALLEL))


@_measure_kernel
def pack_rows(codes, src, scale, zp, size, qmin, slot, lut, use_lut, do_pack, out, err, norm):
    """Pack the codes of ``codes`` (float, as the core returns them) into ``out``.

    ``src`` is the source weight's storage view; ``err[r]``/``norm[r]`` receive the row's
    sums of squared error and squared value (float64) of the stored values:
    ``(code - zp) * scale`` for integers, ``lut[code - qmin] * scale`` for codebooks.
    ``zp`` may be (rows, 1) of zeros for symmetric codes. ``do_pack=False`` only measures.
    """
    rows, cols = codes.shape
    per = 8 // slot if slot < 8 else 1
    nb = slot // 8
    for r in prange(rows):
        crow = codes[r]
        srow = src[r]
        srow_scale = scale[r]
        zrow = zp[r]
        orow = out[r]
        e = np.float64(0)
        n = np.float64(0)
        g = 0
        for start in range(0, cols, size):
            stop = min(start + size, cols)
            sc = srow_scale[g]
            # float32 sums within a group (at most a row: ample for a report), float64 across groups
            eg = sc - sc
            ng = eg
            if use_lut:
                for c in range(start, stop):
                    x = decode(srow[c])
                    d = x - lut[np.int64(crow[c] - qmin)] * sc
                    eg += d * d
                    ng += x * x
            else:
                z = zrow[g]
                for c in range(start, stop):
                    x = decode(srow[c])
                    d = x - (crow[c] - z) * sc  # the core's dequant, same order
                    eg += d * d
                    ng += x * x
            e += np.float64(eg)
            n += np.float64(ng)
            g += 1
        err[r] = e
        norm[r] = n
        if not do_pack:
            continue
        if slot == 4:  # the common case, written out so that it vectorizes
            for b in range(cols // 2):
                lo = np.int32(crow[2 * b] - qmin)
                hi = np.int32(crow[2 * b + 1] - qmin)
                orow[b] = np.uint8(lo | (hi << 4))
            if cols % 2:
                orow[cols // 2] = np.uint8(np.int32(crow[cols - 1] - qmin))
        elif slot < 8:
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
            for c in range(cols):
                ui = np.int64(crow[c] - qmin)
                for k in range(nb):
                    orow[c * nb + k] = np.uint8((ui >> (8 * k)) & 255)


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
