"""A restricted unpickler for NVIDIA's network pickles: it builds data, never runs the file's code.

NVIDIA's `torch_utils/persistence.py` pickles every network as a call
`_reconstruct_persistent_obj(meta)`, where `meta` holds the source code of the network's module, its
class name and its `__dict__` (parameters, buffers, submodules, `_init_kwargs`). An ordinary unpickle
executes that source code. Here `find_class` allow-lists exactly what those files need and maps each
name to a function of ours that only builds inert data:

- `torch_utils.persistence._reconstruct_persistent_obj`: a `PersistentObject` record; the module
  source stays text and is never run.
- `dnnlib.util.EasyDict`: `EasyDict`, a plain `dict` subclass.
- `collections.OrderedDict`, `builtins.set`, `builtins.frozenset`: themselves.
- `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, `_rebuild_parameter_with_state`: a CPU
  tensor, its view bounds checked by `Tensor.set_`.
- `torch.storage._load_from_bytes`: `torch.load(..., weights_only=True)` of the bytes.
- `_codecs.encode` (how protocol 2 writes `bytes`): `str.encode('latin1')` only.
- `numpy.core.multiarray._reconstruct` and `scalar`, `numpy.core.numeric._frombuffer` (and the
  `numpy._core` names of NumPy 2), `numpy.ndarray`, `numpy.dtype`: numeric arrays and scalars only,
  through `np.frombuffer`.

Anything else (`os.system`, `builtins.eval`, `torch.load`, ...) is refused with `UnsafePickleError`
before it is called. Network pickles are read in protocols 2 to 5 (NVIDIA's `pickle.dump` writes 4);
protocol 2 files name modules the Python 2 way (`__builtin__`), which is accepted for the same names.
Protocols 0 and 1 write objects such as `EasyDict` through `copy_reg._reconstructor`, which is refused
with a message that says so (plain data in them, dicts and lists, still loads).
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch

from models.convert.common import error_line, torch_load_detail

__all__ = ["EasyDict", "PersistentObject", "UnsafePickleError", "restricted_load"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allow-list, or hands it unexpected arguments."""


class EasyDict(dict):  # type: ignore[type-arg]
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict (its attribute access is not needed)."""

    def __setstate__(self, state: Any) -> None:
        if state not in (None, {}):
            raise UnsafePickleError(
                f"dnnlib.util.EasyDict with unexpected instance state {type(state).__name__}"
            )


class PersistentObject:
    """One `torch_utils.persistence` object as recorded: its class name, module source and state.

    The module source is kept as text and never executed; `state` is the network's `__dict__`
    (`_parameters`, `_buffers`, `_modules`, `_init_args`, `_init_kwargs`, ...).
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.type = meta["type"]
        self.version = meta["version"]
        self.module_src = meta["module_src"]
        self.class_name = meta["class_name"]
        self.state = meta["state"]

    def __setstate__(self, state: Any) -> None:
        # A BUILD opcode over a record would replace module_src, class_name or state after the checks.
        raise UnsafePickleError(
            f"persistent object {self.class_name!r} with instance state {type(state).__name__} after "
            "its record"
        )

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r})"


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or set(meta) != {"type", "version", "module_src", "class_name", "state"}:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise UnsafePickleError(f"persistent object record with unexpected fields {keys}")
    if not isinstance(meta["module_src"], str) or not isinstance(meta["class_name"], str):
        raise UnsafePickleError("persistent object record without a module source and class name")
    if not isinstance(meta["state"], dict):
        raise UnsafePickleError(
            f"persistent object {meta['class_name']!r} has a {type(meta['state']).__name__} state"
        )
    return PersistentObject(meta)


# ----------------------------------------------------------------------------
# Tensors.


def _load_from_bytes(data: Any) -> torch.TypedStorage | torch.UntypedStorage:
    """A storage, from the `torch.save` stream that `Storage.__reduce__` wrote, loaded weights-only."""
    if not isinstance(data, bytes | bytearray):
        raise UnsafePickleError(f"torch.storage._load_from_bytes needs bytes, got {type(data).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
        try:
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... on bad streams.
            raise UnsafePickleError(
                f"a tensor storage did not load weights-only ({torch_load_detail(err)})"
            ) from err
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"a storage stream held a {type(storage).__name__}")
    return storage


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise UnsafePickleError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"a tensor's storage is a {type(storage).__name__}")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise UnsafePickleError(f"bad tensor storage offset {storage_offset!r}")
    if backward_hooks:
        raise UnsafePickleError("tensors with backward hooks are not loaded")
    if metadata:
        raise UnsafePickleError("tensors with extra metadata are not loaded")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise UnsafePickleError(f"tensor size {shape} and stride {strides} differ in length")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
            dtype = storage.dtype if isinstance(storage, torch.TypedStorage) else torch.uint8
            is_typed = isinstance(storage, torch.TypedStorage)
            untyped = storage.untyped() if is_typed else storage  # type: ignore[no-untyped-call]
            return torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, shape, strides)
    except RuntimeError as err:  # Out-of-bounds views of the storage.
        raise UnsafePickleError(f"a tensor does not fit its storage: {error_line(err)}") from err


def _rebuild_parameter(
    data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> Any:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"a parameter's data is a {type(data).__name__}")
    if backward_hooks or state:
        raise UnsafePickleError("parameters with hooks or extra state are not loaded")
    return data


# ----------------------------------------------------------------------------
# NumPy: numeric dtypes only.


def _numeric_dtype(value: Any) -> np.dtype[Any]:
    if not isinstance(value, np.dtype) or value.kind not in "biufc" or value.fields is not None:
        raise UnsafePickleError(f"only numeric NumPy dtypes are loaded, got {value!r}")
    return value


class _DType:
    """`numpy.dtype(spec, align, copy)` then its `__setstate__`, checked to stay a plain numeric dtype."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy.dtype spec must be a string, got {type(spec).__name__}")
        try:
            self.dtype = _numeric_dtype(np.dtype(spec))
        except TypeError as err:
            raise UnsafePickleError(f"bad numpy.dtype spec {spec!r}") from err

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"unexpected numpy.dtype state {state!r}")
        if any(part is not None for part in state[2:5]):
            raise UnsafePickleError("structured or sub-array NumPy dtypes are not loaded")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(value: Any) -> np.dtype[Any]:
    return _numeric_dtype(value.dtype if isinstance(value, _DType) else value)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    dt = _as_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dt} needs {dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt)[0]


class _NdArray:
    """`numpy.core.multiarray._reconstruct(ndarray, ...)` then `__setstate__`: a numeric array."""

    def __init__(self, cls: Any, shape: Any, dtype_code: Any) -> None:
        if cls is not _NDARRAY:
            raise UnsafePickleError("numpy _reconstruct of something other than ndarray")
        self.array: np.ndarray[Any, Any] = np.zeros(0)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickleError("unexpected numpy.ndarray state")
        _, shape, dtype, is_fortran, raw = state
        dt = _as_dtype(dtype)
        shape = _int_tuple(shape, "shape")
        if not isinstance(raw, bytes | bytearray):
            raise UnsafePickleError("numpy.ndarray data must be bytes")
        try:
            flat = np.frombuffer(bytes(raw), dtype=dt)
            self.array = flat.reshape(shape, order="F" if is_fortran else "C").copy()
        except ValueError as err:
            raise UnsafePickleError(
                f"numpy.ndarray data does not fit its shape {shape}: {error_line(err)}"
            ) from err


_NDARRAY = object()  # What `numpy.ndarray` unpickles to: only a marker for `_reconstruct`.


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray[Any, Any]:
    dt = _as_dtype(dtype)
    if not isinstance(buffer, bytes | bytearray) or order not in ("C", "F"):
        raise UnsafePickleError("numpy _frombuffer needs bytes and order 'C' or 'F'")
    try:
        flat = np.frombuffer(bytes(buffer), dtype=dt)
        array: np.ndarray[Any, Any] = flat.reshape(_int_tuple(shape, "shape"), order=order).copy()
        return array
    except ValueError as err:
        raise UnsafePickleError(f"numpy array data does not fit its shape: {error_line(err)}") from err


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only accepted as protocol 2's latin1 bytes")
    return text.encode("latin1")


def _numpy_names(module_tail: str, name: str, value: Any) -> dict[tuple[str, str], Any]:
    return {(f"numpy.{core}.{module_tail}", name): value for core in ("core", "_core")}


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    **_numpy_names("multiarray", "_reconstruct", _NdArray),
    **_numpy_names("multiarray", "scalar", _numpy_scalar),
    **_numpy_names("numeric", "_frombuffer", _numpy_frombuffer),
}


_RECONSTRUCTOR = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: its memo is a dict. The C one sizes a zero-filled memo array by the
    largest index a PUT opcode names, so one corrupt index makes it allocate and touch gigabytes."""

    def find_class(self, module: str, name: str) -> Any:
        value = _ALLOWED.get((module, name))
        if (module, name) in _RECONSTRUCTOR:
            raise UnsafePickleError(
                f"refused to load {module}.{name}, how pickle protocols 0 and 1 write objects: network "
                "pickles are read in protocols 2 to 5; re-save it with pickle protocol 2 or later"
            )
        if module.startswith("dnnlib.tflib"):
            raise UnsafePickleError(
                f"a TensorFlow StyleGAN pickle ({module}.{name}); convert it to a PyTorch pickle first with "
                "NVIDIA's stylegan2-ada-pytorch legacy.py"
            )
        if value is None:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: not on the allow-list of network pickles"
            )
        return value

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not expected in a network pickle")


def _finish(root: Any) -> Any:
    """Replace the NumPy stand-ins by arrays and dtypes, through containers and persistent states.

    Iterative, so that deeply nested data (a pickle can nest 100000 lists in a few hundred KB) cannot
    exhaust the interpreter's stack. Dicts, lists and records are changed in place, keeping shared
    references and cycles; tuples are rebuilt once their items are done.
    """
    results: dict[int, Any] = {}  # id of a value -> what replaces it
    seen: list[Any] = []  # Keeps every value alive, so that ids are not reused while this runs.
    containers: list[Any] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        value, items_done = stack.pop()
        key = id(value)
        if items_done:  # A tuple whose items are finished.
            finished = tuple(results[id(v)] for v in value)
            if any(item is _PENDING for item in finished):
                raise UnsafePickleError("a tuple that contains itself through a list or dict")
            results[key] = finished
            continue
        if key in results:
            continue
        seen.append(value)
        if isinstance(value, _NdArray):
            results[key] = value.array
        elif isinstance(value, _DType):
            results[key] = value.dtype
        elif isinstance(value, PersistentObject | dict | list):
            results[key] = value
            containers.append(value)
            items = (
                [value.state]
                if isinstance(value, PersistentObject)
                else list(value.values() if isinstance(value, dict) else value)
            )
            stack.extend((item, False) for item in reversed(items))
        elif isinstance(value, tuple):
            results[key] = _PENDING
            stack.append((value, True))
            stack.extend((item, False) for item in reversed(value))
        else:
            results[key] = value
    for container in containers:
        if isinstance(container, PersistentObject):
            container.state = results[id(container.state)]
        elif isinstance(container, dict):
            for k in list(container):
                container[k] = results[id(container[k])]
        else:
            container[:] = [results[id(v)] for v in container]
    return results[id(root)]


_PENDING = object()  # A tuple whose items are being finished.


def restricted_load(f: IO[bytes]) -> Any:
    """Unpickle a network pickle with the allow-list above.

    Args:
        f: The pickle, an open binary file.

    Returns:
        The unpickled data: dicts, lists, tensors, NumPy arrays and scalars, `EasyDict`s and
        `PersistentObject` records.

    Raises:
        UnsafePickleError: On a name outside the allow-list or unexpected arguments to one inside it.
        pickle.UnpicklingError, EOFError, ValueError, MemoryError, ...: On a file that is not a valid
            pickle (the unpickler raises what it meets).
    """
    load: Callable[[], Any] = _RestrictedUnpickler(f).load
    return _finish(load())
