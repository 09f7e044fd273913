"""torch tensors in and out of the core: the one module that crosses between them.

CPU tensors of float32, float64, float16 and bfloat16 reach the core's Numba kernels as
NumPy views of their own storage, ``t.detach().numpy()``. NumPy has no bfloat16, so a
bfloat16 tensor is viewed as its int16 bit pattern and that view re-labelled
``ml_dtypes.bfloat16``; the core hands the kernels the int16 pattern again
(``nbwoq._arrays.kernel_view``) and they decode it in registers. The kernels write into
that memory, so the caller's tensor holds the result and the very object passed in is
returned (``id`` and ``data_ptr`` unchanged). The parameters the core returns (scales,
zero points) are fresh NumPy arrays, wrapped with ``torch.from_numpy`` (no copy).

Every other tensor takes the core's array-API reference path as a torch tensor, on its
own device: CUDA and any other non-CPU device (nothing is ever moved to the CPU), CPU
tensors of other dtypes (the core then names what it expected), and any tensor while
``reference_path()`` is active (tests compare the two paths with it).

**Non-contiguous CPU tensors** (a transposed or sliced weight) are the one case with a
copy: the kernels take rows of contiguous memory, so such a weight is quantized in a
contiguous copy (one temporary the size of the weight) that is then copied back into
the caller's tensor, after the core has succeeded. A tensor whose elements overlap in
memory (``expand``) cannot hold an in-place result and is refused.

Parameters that require grad are handled as the reference does, by writing to their
``.data``: nothing is recorded by autograd.
"""

import contextlib
import threading

import numpy as np
import torch

from nbwoq import _arrays, _validate

_KERNEL_DTYPES = {torch.float32, torch.float64, torch.float16}
if _arrays.BFLOAT16 is not None:  # without ml_dtypes bfloat16 takes the reference path
    _KERNEL_DTYPES.add(torch.bfloat16)

_state = threading.local()


@contextlib.contextmanager
def reference_path():
    """Within this block (in this thread), CPU tensors take the array-API reference path
    instead of the Numba kernels, as non-CPU tensors always do."""
    previous = getattr(_state, "reference", False)
    _state.reference = True
    try:
        yield
    finally:
        _state.reference = previous


def check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}"
            " (NumPy and other array-API arrays go to the same function in nbwoq)"
        )
    # Tensors without ordinary strided memory: torch itself raises RuntimeError or
    # NotImplementedError on the way (contiguous(), numpy(), item()).
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; pass {name}.to_dense()")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: it holds no values to quantize")
    if x.is_neg():
        raise ValueError(f"{name} is a lazy negative view; pass {name}.resolve_neg()")


def uses_kernels(t):
    """True when tensor ``t`` goes to the Numba kernels (a NumPy view of its memory)."""
    return t.device.type == "cpu" and t.dtype in _KERNEL_DTYPES and not getattr(_state, "reference", False)


def _overlaps(t):
    """Whether two elements of ``t`` share memory (the core's rule, strides in elements)."""
    return _validate.overlapping(tuple(t.shape), tuple(t.stride()), 1)


def to_numpy(t):
    """NumPy view of CPU tensor ``t``'s memory (bfloat16 as ``ml_dtypes.bfloat16``). No copy."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_arrays.BFLOAT16)
    return t.numpy()


def to_torch(a):
    """Tensor sharing NumPy array ``a``'s memory (bfloat16 through its int16 pattern)."""
    if _arrays.BFLOAT16 is not None and a.dtype == _arrays.BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _same_device(value, name, device):
    """Tensor arguments besides the weight (quantile, scale, zp) must be on its device:
    nothing is moved behind the caller's back."""
    if isinstance(value, torch.Tensor) and value.device != device:
        raise ValueError(f"{name} must be on the weight's device ({device}), got {value.device}")
    return value


def _argument_to_numpy(value, name, device):
    """Tensor arguments besides the weight as NumPy views, for the kernel path."""
    value = _same_device(value, name, device)
    return to_numpy(value) if isinstance(value, torch.Tensor) else value


def _from_core(result, core_weight, weight):
    """The core's result with the weight it was given replaced by the caller's tensor and
    NumPy arrays wrapped as tensors (no copies)."""
    if result is core_weight:
        return weight
    if isinstance(result, np.ndarray):
        return to_torch(result)
    if isinstance(result, tuple):
        return tuple(_from_core(item, core_weight, weight) for item in result)
    if isinstance(result, list):
        return [_from_core(item, core_weight, weight) for item in result]
    if isinstance(result, dict):
        return {key: _from_core(item, core_weight, weight) for key, item in result.items()}
    return result


def call(func, weight, *args, writes=True, name="weight", **kwargs):
    """``func(weight, *args, **kwargs)`` from the core, on ``weight``'s own memory.

    Parameters
    ----------
    func : callable
        A core function taking the weight first.
    weight : torch.Tensor
    writes : bool
        Whether ``func`` writes its result into the weight (a non-contiguous weight is
        then copied back after success); read-only functions pass False.
    name : str
        The weight argument's name, for error messages.

    Returns
    -------
    What ``func`` returns, with the weight it was handed replaced by ``weight`` itself and
    NumPy arrays by tensors sharing their memory.
    """
    check_tensor(weight, name)
    device = weight.device
    # On either path: the reference path's write would fail in torch (RuntimeError).
    if writes and not weight.is_contiguous() and _overlaps(weight):
        raise ValueError(
            f"{name} has elements that share memory (e.g. from expand()), so it cannot hold an "
            f"in-place result; pass {name}.clone()"
        )
    if not uses_kernels(weight):
        args = [_same_device(a, f"argument {i + 2}", device) for i, a in enumerate(args)]
        kwargs = {key: _same_device(v, key, device) for key, v in kwargs.items()}
        # .detach(): a leaf that requires grad refuses in-place writes; its .data does not.
        alias = weight.detach()
        return _from_core(func(alias, *args, **kwargs), alias, weight)
    work = weight.detach()
    copied = not work.is_contiguous()
    if copied:
        work = work.contiguous()  # the documented copy
    view = to_numpy(work)
    args = [_argument_to_numpy(a, f"argument {i + 2}", device) for i, a in enumerate(args)]
    kwargs = {key: _argument_to_numpy(v, key, device) for key, v in kwargs.items()}
    result = func(view, *args, **kwargs)
    if copied and writes:
        weight.data.copy_(work)
    return _from_core(result, view, weight)
