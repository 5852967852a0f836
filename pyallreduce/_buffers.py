"""Turning the caller's arrays into (address, count, dtype) for the C++ core.

Accepted: contiguous CPU torch tensors, numpy arrays, and other objects that
expose the buffer protocol or DLPack (read through a zero-copy numpy view).
Every rejection carries the ArgumentError code that the other ranks are told.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from . import _C

# The supported element types and their sizes in bytes: the one list every
# other table of dtypes is derived from.
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8}
DTYPES = tuple(_ITEMSIZE)
# numpy dtypes by object: a dict lookup costs far less than dtype.name on the
# per-call path. bfloat16 (from ml_dtypes) is not a numpy built-in and goes by name.
_NUMPY_DTYPES = {np.dtype(name): name for name in DTYPES if name != "bfloat16"}


class BufferView(NamedTuple):
    """The memory behind one argument: where it starts and what it holds."""

    obj: Any  # what the caller passed, returned as the result
    address: int
    count: int
    dtype: str
    writable: bool

    @property
    def nbytes(self) -> int:
        return self.count * _ITEMSIZE[self.dtype]


def rejection(exc_type: type[Exception], code: _C.ArgumentError, message: str) -> Exception:
    """An exception for a bad argument, tagged with the code sent to the other ranks."""
    exc = exc_type(message)
    exc.argument_error = code  # type: ignore[attr-defined]
    return exc


def _torch_view(tensor: Any, role: str) -> BufferView:
    import torch

    if tensor.layout != torch.strided:
        raise rejection(TypeError, _C.ArgumentError.bad_buffer, f"{role} is a {tensor.layout} tensor; only dense (strided) tensors can be reduced")
    if tensor.device.type != "cpu":
        raise rejection(
            ValueError, _C.ArgumentError.bad_buffer,
            f"{role} is on {tensor.device}; this pyallreduce build reduces CPU tensors only",
        )
    if not tensor.is_contiguous():
        raise rejection(ValueError, _C.ArgumentError.bad_buffer, f"{role} is not contiguous; pass tensor.contiguous()")
    if tensor.is_conj() or tensor.is_neg():
        raise rejection(ValueError, _C.ArgumentError.bad_buffer, f"{role} has a lazy conjugate/negative bit; call resolve_conj()/resolve_neg() first")
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _ITEMSIZE:
        raise rejection(TypeError, _C.ArgumentError.bad_dtype, f"{role} has dtype {tensor.dtype}; supported: {', '.join(DTYPES)}")
    return BufferView(tensor, tensor.data_ptr(), tensor.numel(), dtype, writable=True)


def _numpy_view(array: np.ndarray, obj: Any, role: str) -> BufferView:
    dtype = _NUMPY_DTYPES.get(array.dtype) or array.dtype.name
    if dtype not in _ITEMSIZE:
        raise rejection(TypeError, _C.ArgumentError.bad_dtype, f"{role} has dtype {array.dtype}; supported: {', '.join(DTYPES)}")
    if not array.dtype.isnative:
        raise rejection(TypeError, _C.ArgumentError.bad_dtype, f"{role} is not in native byte order")
    if not array.flags.c_contiguous:
        raise rejection(ValueError, _C.ArgumentError.bad_buffer, f"{role} is not C-contiguous; pass np.ascontiguousarray(...)")
    return BufferView(obj, array.ctypes.data, array.size, dtype, writable=bool(array.flags.writeable))


def describe(obj: Any, role: str) -> BufferView:
    """The BufferView of a tensor or array argument (`role` names it in errors)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _torch_view(obj, role)
    if isinstance(obj, np.ndarray):
        return _numpy_view(obj, obj, role)
    try:
        array = np.from_dlpack(obj) if hasattr(obj, "__dlpack__") else np.asarray(memoryview(obj))
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise rejection(
            TypeError, _C.ArgumentError.bad_buffer,
            f"{role} must be a torch tensor, a numpy array or a buffer-protocol object, not {type(obj).__name__} ({exc})",
        ) from None
    return _numpy_view(array, obj, role)


def check_output(source: BufferView, out: BufferView) -> None:
    """out= must be writable, hold as many elements of the same dtype, and either
    be the input itself or not overlap it."""
    if not out.writable:
        raise rejection(ValueError, _C.ArgumentError.bad_output, "out is read-only")
    if out.dtype != source.dtype:
        raise rejection(ValueError, _C.ArgumentError.bad_output, f"out has dtype {out.dtype} but the input has {source.dtype}")
    if out.count != source.count:
        raise rejection(ValueError, _C.ArgumentError.bad_output, f"out has {out.count} elements but the input has {source.count}")
    overlaps = out.address < source.address + source.nbytes and source.address < out.address + out.nbytes
    if overlaps and out.address != source.address:
        raise rejection(ValueError, _C.ArgumentError.bad_output, "out partially overlaps the input")
