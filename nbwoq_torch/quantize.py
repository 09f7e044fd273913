"""The seed's quantization functions on torch tensors.

Each function is the core function of the same name (``nbwoq.quantize``) applied to the
tensor's own memory through ``_interop.call``: CPU float32/float64/float16/bfloat16
tensors go to the Numba kernels without a copy and are overwritten in place; tensors on
any other device take the array-API reference path on that device. The core validates
every argument before the first write, so a failed call leaves the tensor untouched.
Semantics, argument checks and the deliberate deviations from the reference are the
core's; see its docstrings. The torch face adds what the reference's own algorithms pass
(SPEC deviation 7, ``_reference_calls``): the keywords they misspell are ignored with a
one-time warning, and ``quant_weight_w_scale`` takes the reference 3.10's call form too.
"""

import torch

from nbwoq import quantize as _core
from nbwoq_torch import _interop, _reference_calls


def quantize_4bit(tensor, quantile=1.0, dtype="nf4", return_int=False, **kwargs):
    """Quantize each row of ``tensor`` to the nearest level of a 4-bit codebook, in place.

    Parameters
    ----------
    tensor : torch.Tensor, shape (rows, cols)
        Overwritten with the dequantized values (or the codes with ``return_int``).
    quantile : float, default 1.0
        Clip ratio in (0, 1]: ``scale = max(|row|) * quantile / max(levels)``.
    dtype : {"nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1"}, default "nf4"
    return_int : bool, default False
        Store the codes of ``INT_MAPPING[dtype]`` and return the scales.
    **kwargs
        As for ``nbwoq.quantize_4bit``: ``scale`` (a (rows, 1) tensor on the same device),
        ``cast_int``, ``double_quant``, ``check_finite``. ``cast_int`` is read by its
        value: ``cast_int=True`` stores the codes and scales them like levels,
        ``cast_int=False`` is the same as leaving it out (the reference tests only the
        key's presence, so its ``cast_int=False`` stores codes; a deliberate difference,
        see the migration guide). ``num_bits`` and ``data_type``, which the reference
        ignores, are ignored with a one-time warning.

    Returns
    -------
    tensor or (tensor, scale, None)
        ``tensor`` is the object passed in; ``scale`` is a float32 tensor (float64 for
        float64 input) of shape (rows, 1).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, before anything is written.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import quantize_4bit
    >>> t = torch.tensor([[-1.0, 0.0, 0.5, 1.0]])
    >>> out, scale, _ = quantize_4bit(t, dtype="nf4", return_int=True)
    >>> out is t, out.tolist(), scale.tolist()
    (True, [[7.0, 0.0, -4.0, -1.0]], [[1.0]])
    """
    kwargs = _reference_calls.drop_ignored_keywords("quantize_4bit", kwargs)
    return _interop.call(_core.quantize_4bit, tensor, name="tensor", quantile=quantile, dtype=dtype,
                         return_int=return_int, **kwargs)


def qdq_weight_asym(weight, bits=4, quantile=1.0, return_int=False, **kwargs):
    """Quantize each row of ``weight`` asymmetrically (one group per row), in place.

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten.
    bits : int, default 4
        1 to 16.
    quantile : float or torch.Tensor, default 1.0
        Clip ratio in (0, 1], or one per row as a (rows, 1) tensor.
    return_int : bool, default False
        Store the codes ``0 .. 2**bits - 1`` instead of the dequantized values and return
        the scale and zero point.
    **kwargs
        ``check_finite`` (default True), ``double_quant`` (like ``return_int``).

    Returns
    -------
    weight or (weight, scale, zp)
        ``weight`` is the object passed in; ``scale`` and ``zp`` are (rows, 1) float32
        tensors (float64 for float64 weights).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, before anything is written.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import qdq_weight_asym
    >>> w = torch.tensor([[0.0, 0.5, 1.0, 1.5]])
    >>> q, scale, zp = qdq_weight_asym(w, bits=2, return_int=True)
    >>> q is w, q.tolist(), scale.item(), zp.item()
    (True, [[0.0, 1.0, 2.0, 3.0]], 0.5, -0.0)
    """
    kwargs = _reference_calls.drop_ignored_keywords("qdq_weight_asym", kwargs)
    return _interop.call(_core.qdq_weight_asym, weight, bits=bits, quantile=quantile, return_int=return_int,
                         **kwargs)


def qdq_weight_sym(weight, bits=4, quantile=1.0, return_int=False, full_range=False, **kwargs):
    """Quantize each row of ``weight`` symmetrically (one group per row), in place.

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten.
    bits : int, default 4
        1 to 16 (2 to 16 with ``full_range``).
    quantile : float or torch.Tensor, default 1.0
        Clip ratio in (0, 1], or one per row as a (rows, 1) tensor.
    return_int : bool, default False
        Store the codes instead of the dequantized values and return the scale.
    full_range : bool, default False
        Use the code ``-2**(bits-1)`` too (the scale is negated when the row's largest
        magnitude is positive, so that value lands there).
    **kwargs
        ``check_finite`` (default True), ``double_quant`` (like ``return_int``).

    Returns
    -------
    weight or (weight, scale, None)
        ``weight`` is the object passed in; ``scale`` is a (rows, 1) float32 tensor
        (float64 for float64 weights).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, before anything is written.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import qdq_weight_sym
    >>> w = torch.tensor([[-1.0, -0.4, 0.2, 0.8]], dtype=torch.bfloat16)
    >>> q = qdq_weight_sym(w, bits=3, full_range=True, return_int=True)[0]
    >>> q is w, q.dtype, q.tolist()
    (True, torch.bfloat16, [[-4.0, -2.0, 1.0, 3.0]])
    """
    kwargs = _reference_calls.drop_ignored_keywords("qdq_weight_sym", kwargs)
    return _interop.call(_core.qdq_weight_sym, weight, bits=bits, quantile=quantile, return_int=return_int,
                         full_range=full_range, **kwargs)


def qdq_weight_actor(weight, bits, scheme, quantile=1.0, dtype="int", return_int=False, full_range=False, **kwargs):
    """Quantize each row of ``weight`` in place with the integer scheme or a 4-bit codebook.

    A codebook ``dtype`` (a key of ``FLOAT_MAPPING``) goes to ``quantize_4bit`` and
    ignores ``bits``, ``scheme`` and ``full_range``; ``"int"`` goes to
    ``qdq_weight_sym`` or ``qdq_weight_asym`` by ``scheme``.

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
    bits : int
        1 to 16.
    scheme : {"sym", "asym"}
    quantile, dtype, return_int, full_range, **kwargs
        As for ``quant_tensor``.

    Returns
    -------
    weight or (weight, scale, zp)
        ``weight`` is the object passed in.

    Raises
    ------
    TypeError, ValueError
        For a bad argument (``bits <= 0`` included), before anything is written.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import qdq_weight_actor
    >>> w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> qdq_weight_actor(w, 2, "asym", return_int=True)[0].tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    kwargs = _reference_calls.drop_ignored_keywords("qdq_weight_actor", kwargs)
    return _interop.call(_core.qdq_weight_actor, weight, bits=bits, scheme=scheme, quantile=quantile, dtype=dtype,
                         return_int=return_int, full_range=full_range, **kwargs)


def quant_tensor(weight, bits=4, group_size=-1, scheme="asym", quantile=1.0, dtype="int", return_int=False,
                 full_range=False, **kwargs):
    """Group-quantize ``weight`` in place and return the very same tensor object.

    Groups run along the last axis: ``group_size`` consecutive columns share one scale
    (and zero point); ``-1`` or a size larger than the row means one group per row, and
    a size that does not divide the row leaves a shorter last group. A CPU tensor is
    quantized in its own memory by the Numba kernels (a non-contiguous one through one
    contiguous copy, copied back); a tensor on another device by the array-API reference
    path on that device.

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        float16, bfloat16, float32 or float64; overwritten. Half-precision weights are
        computed in float32 and rounded once on store.
    bits : int, default 4
        1 to 16; ``bits <= 0`` returns ``weight`` untouched (the reference's meaning).
    group_size : int, default -1
        -1 or a positive integer.
    scheme : {"asym", "sym"}, default "asym"
    quantile : float or torch.Tensor, default 1.0
        Clip ratio in (0, 1], or one per group as a (rows, n_groups) tensor.
    dtype : str, default "int"
        ``"int"`` or a 4-bit codebook (``"nf4"``, ``"fp4"``, ``"fp4_e2m1_bnb"``,
        ``"fp4_e2m1"``).
    return_int : bool, default False
        Store the codes (in the weight's dtype) instead of the dequantized values and
        also return the scales (and zero points for asym).
    full_range : bool, default False
        Symmetric only: use the code ``-2**(bits-1)`` too.
    **kwargs
        As for ``nbwoq.quant_tensor`` (``check_finite``, ``double_quant`` and its
        ``double_quant_*`` options). The reference's callers' misspellings ``num_bits``
        and ``data_type``, and a bool ``double_quant_scheme`` while ``double_quant`` is
        off, are ignored with a one-time warning, as the reference ignores them; any
        other unknown keyword raises ``TypeError``.

    Returns
    -------
    weight or (weight, scale, zp)
        ``weight`` is the object passed in (same ``id``, same ``data_ptr``). ``scale`` and
        ``zp`` are (rows, n_groups) float32 tensors (float64 for float64 weights) on
        the weight's device; ``zp`` is None for sym and the codebooks.

    Raises
    ------
    TypeError, ValueError
        For a bad argument or a non-finite weight, before anything is written.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import quant_tensor
    >>> w = torch.linspace(-1, 1, 8).reshape(2, 4)
    >>> out, scale, zp = quant_tensor(w, bits=2, group_size=2, return_int=True)
    >>> out is w, tuple(scale.shape), scale.dtype
    (True, (2, 2), torch.float32)
    >>> w = torch.nn.Linear(64, 16).weight.to(torch.bfloat16)
    >>> ptr = w.data_ptr()
    >>> quant_tensor(w, bits=4, group_size=32) is w, w.data_ptr() == ptr
    (True, True)
    """
    kwargs = _reference_calls.drop_ignored_keywords("quant_tensor", kwargs)
    return _interop.call(_core.quant_tensor, weight, bits=bits, group_size=group_size, scheme=scheme,
                         quantile=quantile, dtype=dtype, return_int=return_int, full_range=full_range, **kwargs)


def quant_weight_w_scale(weight, scale, *args, **kwargs):
    """Quantize ``weight`` with known scales (and zero points) into codes, in place.

    Integer ``dtype``: ``code = round(w / scale)``, or ``round(w / scale + zp)`` with a zero
    point (added before rounding, as the reference does); a 4-bit codebook: the codes of
    ``quantize_4bit`` with the given scale. Groups as in ``quant_tensor``.

    Two call forms are accepted: the seed's, shown by the signature,
    ``(weight, scale, zp=None, group_size=-1, dtype="int", bits=None)``, and the
    reference 3.10's, ``(weight, scale, scale_bf16_to_fp8, zp=None, group_size=-1,
    dtype="int", fp8_aware=False)``, which its GPTQ uses. See Notes for how a positional
    call is read.

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        Overwritten with the codes (in its own dtype).
    scale : torch.Tensor, shape (rows, n_groups)
        On the weight's device. A shape the reference's torch arithmetic broadcasts
        instead (one row for all rows, extra columns, per column with
        ``group_size=-1``) is computed as the reference computes it, with a one-time
        warning: the reference's GPTQ passes such a transposed scale to some
        ``transformers`` ``Conv1D`` layers. Any other shape raises ``ValueError``.
    zp : torch.Tensor or None, default None
        Zero points, shape (rows, n_groups), or broadcast as ``scale`` is.
    group_size : int, default -1
    dtype : str, default "int"
    bits : int or None, default None
        New (SPEC deviation 2): with it, integer codes are clamped to the format's range
        (``[0, 2**bits - 1]`` with ``zp``, else ``[-2**(bits-1), 2**(bits-1) - 1]``);
        without it they are not clamped, as in the reference.
    scale_bf16_to_fp8 : torch.Tensor or None, default None
        3.10's per-tensor (or broadcastable) float8 scale; read only with ``fp8_aware``.
    fp8_aware : bool, default False
        3.10's fp8-aware quantization: the weight is first divided by
        ``scale_bf16_to_fp8`` (as a multiplication by its reciprocal, in the weight's
        dtype), clamped to the float8 E4M3 protective range, rounded through
        ``torch.float8_e4m3fn``, and the codes are computed from that float32 value.

    Returns
    -------
    torch.Tensor
        ``weight`` itself, holding the codes.

    Raises
    ------
    TypeError, ValueError
        For a bad argument or a call that fits neither form, before anything is written.

    Notes
    -----
    The third positional argument is the seed's ``zp`` or 3.10's ``scale_bf16_to_fp8``.
    It is read as 3.10's when a fourth positional argument is a tensor or None (3.10's
    ``zp``; the seed's fourth is the int ``group_size``), or when ``zp=`` or (without
    ``scale_bf16_to_fp8=``) ``fp8_aware=`` is also passed by keyword; otherwise as the
    seed's ``zp``, so no call that worked before changes meaning. ``(weight, scale, t)``
    alone is therefore the seed's call with zero point ``t``.

    Examples
    --------
    >>> import torch
    >>> from nbwoq_torch import quant_weight_w_scale
    >>> w = torch.tensor([[0.0, 0.5, 1.0, 1.6]])
    >>> out = quant_weight_w_scale(w, torch.tensor([[0.5]]), torch.tensor([[0.0]]), bits=2)
    >>> out is w, out.tolist()
    (True, [[0.0, 1.0, 2.0, 3.0]])
    >>> w = torch.tensor([[0.0, 0.5, 1.0, 1.6]])
    >>> quant_weight_w_scale(w, torch.tensor([[0.5]]), None, torch.tensor([[0.0]]), -1, dtype="int").tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    call = _reference_calls.resolve_w_scale_call((weight, scale) + args, kwargs)
    weight = call["weight"]
    call["scale"], call["zp"], call["group_size"] = _reference_calls.broadcast_like_reference(
        weight, call["scale"], call["zp"], call["group_size"])
    if call["fp8_aware"] is not False and call["fp8_aware"] is not True:
        raise TypeError(f"fp8_aware must be True or False, got {call['fp8_aware']!r}")
    if not call["fp8_aware"]:
        return _interop.call(_core.quant_weight_w_scale, weight, scale=call["scale"], zp=call["zp"],
                             group_size=call["group_size"], dtype=call["dtype"], bits=call["bits"])
    _interop.check_tensor(weight, "weight")
    work = _reference_calls.fp8_prescale(weight, call["scale_bf16_to_fp8"])
    _interop.call(_core.quant_weight_w_scale, work, scale=call["scale"], zp=call["zp"],
                  group_size=call["group_size"], dtype=call["dtype"], bits=call["bits"])
    with torch.no_grad():
        weight.copy_(work)
    return weight


quant_weight_w_scale.__signature__ = _reference_calls.PUBLIC_SIGNATURE
