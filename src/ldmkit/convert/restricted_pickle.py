"""Read a torch zip checkpoint that pickles foreign objects, without executing anything from it.

Released LDM / Stable Diffusion ``.ckpt`` files are PyTorch Lightning checkpoints: next to the
``state_dict`` they pickle callbacks, OmegaConf hyper-parameters, ... whose classes are not installed
here and must never be imported or called. ``torch.load(weights_only=True)`` refuses such files.

``restricted_load`` unpickles ``data.pkl`` with ``RestrictedUnpickler``: ``find_class`` never imports
anything; it returns real objects only for the small allow-list below (tensor rebuild functions that
check their arguments, storage types, dtypes, a few builtin containers) and, for every other global, an
inert ``ForeignObject`` subclass that records ``module.name``. Instantiating, calling or restoring the
state of a placeholder only stores the arguments. Storages are read from the zip's ``data/`` records
into CPU memory. The caller decides what to keep (see ``safe_load.load_state_dict_file``).
"""
from __future__ import annotations

import collections
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class ForeignObject:
    """Stand-in for an object whose class is not on the allow-list; nothing of the original runs.

    The pickle opcodes that build an object (call, __new__, BUILD, SETITEMS, APPENDS, ADDITEMS) only
    store their arguments here, so dict / list / set subclasses (Lightning's AttributeDict) load too."""

    _ldm_global = "?"
    __slots__ = ("args", "kwargs", "state", "contents")

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.contents = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE / INST call cls(*args): __new__ did it
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.contents.append((key, value))

    def append(self, value: Any) -> None:
        self.contents.append(value)

    def extend(self, values: Any) -> None:
        self.contents.extend(values)

    def add(self, value: Any) -> None:
        self.contents.append(value)

    def __repr__(self) -> str:
        return f"<foreign {self._ldm_global}>"


def is_foreign(obj: object) -> bool:
    """A placeholder instance or a placeholder class."""
    return isinstance(obj, ForeignObject) or (isinstance(obj, type) and issubclass(obj, ForeignObject))


def find_foreign(obj: object) -> list[str]:
    """``module.name`` of every placeholder reachable from ``obj`` (containers, object state, tensor
    attributes); iterative and cycle-safe because the pickle memo can build self-references."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    stack = [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen or isinstance(x, (str, bytes, bytearray, int, float, complex, bool, type(None))):
            continue
        seen.add(id(x))
        if is_foreign(x):
            found[x._ldm_global] = None
            if isinstance(x, ForeignObject):
                stack.extend([x.args, x.kwargs, x.state, x.contents])
            continue
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
        if isinstance(x, torch.Tensor) and x._backward_hooks:
            stack.append(x._backward_hooks)
        if hasattr(x, "__dict__") and not isinstance(x, type):
            stack.append(vars(x))
    return list(found)


# --- allow-list -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to: only its dtype is needed, and it is not callable."""

    dtype: torch.dtype


def _check_storage(storage: object) -> torch.storage.TypedStorage:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor storage must come from the archive, got {type(storage).__name__}")
    return storage


def _check_no_hooks(hooks: object) -> None:
    # torch pickles an empty OrderedDict here; hooks would be callables, i.e. code
    if hooks:
        raise pickle.UnpicklingError("tensor carries backward hooks")


def _rebuild_tensor(storage: object, offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    s = _check_storage(storage)
    # set_ checks that size / stride / offset stay inside the storage
    return torch.empty((0,), dtype=s.dtype).set_(s._untyped_storage, offset, size, stride)


def _rebuild_tensor_v2(storage: object, offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       backward_hooks: object, metadata: object = None) -> torch.Tensor:
    _check_no_hooks(backward_hooks)
    t = _rebuild_tensor(storage, offset, size, stride)
    if metadata:
        if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
            raise pickle.UnpicklingError(f"unexpected tensor metadata {metadata!r}")
        torch._utils.set_tensor_metadata(t, metadata)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _rebuild_parameter(data: object, requires_grad: bool, backward_hooks: object) -> torch.nn.Parameter:
    _check_no_hooks(backward_hooks)
    if type(data) is not torch.Tensor:
        raise pickle.UnpicklingError(f"parameter data must be a tensor, got {type(data).__name__}")
    return torch.nn.Parameter(data, bool(requires_grad))


def _rebuild_parameter_with_state(data: object, requires_grad: bool, backward_hooks: object,
                                  state: object) -> object:
    if state:  # python attributes on a parameter would be set with setattr: keep it inert
        return _placeholder("torch._utils._rebuild_parameter_with_state")(data, requires_grad, state)
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func: object, new_type: object, args: tuple, state: object) -> object:
    # torch uses this for tensor subclasses and tensors with python attributes; only the plain case is real
    if func not in _REBUILDERS or new_type not in (torch.Tensor, torch.nn.Parameter) or state:
        return _placeholder("torch._tensor._rebuild_from_type_v2")(func, new_type, args, state)
    t = func(*args)
    return t if type(t) is new_type else _placeholder("torch._tensor._rebuild_from_type_v2")(func, new_type, args)


def _codecs_encode(text: object, encoding: str = "utf-8") -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1"); no other codec is looked up
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_REBUILDERS: frozenset[Callable] = frozenset(
    {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state}
)


def _allowed_globals() -> dict[str, object]:
    allowed: dict[str, object] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "_codecs.encode": _codecs_encode,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.slice": slice,
        "builtins.complex": complex,
        "builtins.bytearray": bytearray,
        "torch.UntypedStorage": _StorageType(torch.uint8),
        "torch.storage.UntypedStorage": _StorageType(torch.uint8),
    }
    for dtype, storage_name in torch.storage._dtype_to_storage_type_map().items():
        allowed[f"torch.{storage_name}"] = _StorageType(dtype)
    for value in vars(torch).values():
        if isinstance(value, torch.dtype):
            allowed[str(value)] = value  # str(torch.float32) == "torch.float32", how a dtype is pickled
    return allowed


_ALLOWED = _allowed_globals()
_PLACEHOLDERS: dict[str, type[ForeignObject]] = {}


def _placeholder(full_name: str) -> type[ForeignObject]:
    """One class per global name, so a class pickled as a dict key and its instances stay related."""
    if full_name not in _PLACEHOLDERS:
        attrs = {"__slots__": (), "_ldm_global": full_name}
        _PLACEHOLDERS[full_name] = type(f"Foreign[{full_name}]", (ForeignObject,), attrs)
    return _PLACEHOLDERS[full_name]


# --- unpickler --------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals from the allow-list only (never imports); storages come from
    ``read_storage(key, nbytes, dtype)``, each key read once so views keep sharing memory."""

    def __init__(self, file: Any, read_storage: Callable[[str, int, torch.dtype], torch.UntypedStorage]) -> None:
        super().__init__(file, encoding="utf-8")
        self._read_storage = read_storage
        self._storages: dict[str, torch.storage.TypedStorage] = {}
        self.foreign: dict[str, None] = {}  # ordered set of the globals replaced by placeholders

    def find_class(self, module: str, name: str) -> object:
        if module == "__builtin__":  # python-2 pickles
            module = "builtins"
        full_name = f"{module}.{name}"
        if full_name in _ALLOWED:
            return _ALLOWED[full_name]
        self.foreign[full_name] = None
        return _placeholder(full_name)

    def persistent_load(self, pid: object) -> torch.storage.TypedStorage:
        # torch's zip format: ("storage", storage_type, key, location, numel); location is ignored (CPU)
        if not isinstance(pid, tuple) or len(pid) != 5:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        kind, storage_type, key, _location, numel = pid
        if isinstance(kind, bytes):
            kind = kind.decode("ascii")
        if kind != "storage" or not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            dtype = storage_type.dtype
            untyped = self._read_storage(key, numel * torch._utils._element_size(dtype), dtype)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


@dataclass
class RestrictedResult:
    obj: object
    foreign: list[str]  # global names that became placeholders, in order of appearance


def _member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a member's data in the archive: after its local header (30 bytes + name + extra field,
    which may differ from the central directory's copy, so it is read here)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise pickle.UnpicklingError(f"storage record {info.filename} has no local header")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _mapped_storage(path: Path, info: zipfile.ZipInfo, nbytes: int) -> torch.UntypedStorage | None:
    """An uncompressed record as a private (copy-on-write) memory map of the file: its pages are read when a
    caller touches them and leave the process's memory with the last tensor that views them. None when the
    record cannot be mapped (compressed, or empty)."""
    if info.compress_type != zipfile.ZIP_STORED or nbytes == 0:
        return None
    offset = _member_offset(path, info)
    if offset + nbytes > path.stat().st_size:
        raise pickle.UnpicklingError(f"storage record {info.filename} is truncated")
    arr = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
    return torch.from_numpy(arr).untyped_storage()


def restricted_load(path: str | Path, mmap: bool = False) -> RestrictedResult:
    """Unpickle a torch zip checkpoint (torch >= 1.6 format) with ``RestrictedUnpickler``. ``mmap``: storages
    are copy-on-write maps of the file (as ``torch.load(mmap=True)``), not reads into fresh memory, so a caller
    that casts or assigns one tensor at a time never holds the whole checkpoint twice."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError("not a torch zip checkpoint (the legacy pre-1.6 format is not supported here)")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("not a torch zip checkpoint (no single <archive>/data.pkl record)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"unknown byte order {byteorder!r}")

        def read_storage(key: str, nbytes: int, dtype: torch.dtype) -> torch.UntypedStorage:
            name = f"{prefix}data/{key}"
            if name not in names or zf.getinfo(name).file_size != nbytes:
                raise pickle.UnpicklingError(f"storage record {name} is missing or not {nbytes} bytes")
            mapped = _mapped_storage(path, zf.getinfo(name), nbytes) if mmap else None
            if mapped is not None:
                if byteorder != sys.byteorder:
                    mapped.byteswap(dtype)  # writes touch private pages only: the file is never changed
                return mapped
            buf = torch.empty(nbytes, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            with zf.open(name) as f:
                filled = 0
                while filled < nbytes:
                    n = f.readinto(view[filled:])
                    if not n:
                        raise pickle.UnpicklingError(f"storage record {name} is truncated")
                    filled += n
            storage = buf.untyped_storage()
            if byteorder != sys.byteorder:
                storage.byteswap(dtype)
            return storage

        with zf.open(pickles[0]) as f:
            unpickler = RestrictedUnpickler(f, read_storage)
            obj = unpickler.load()
    return RestrictedResult(obj, list(unpickler.foreign))
