"""An independent reader (and writer) of Megatron's torch_dist checkpoints for the tests: it
unpickles `.metadata` with stand-in classes for PyTorch's distributed-checkpoint metadata types
(torch 1.13 here has no torch.distributed.checkpoint), reads each item's bytes from the
`__R_I.distcp` files with torch.load, and assembles global tensors. It shares no code with moectl."""
import io
import os
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

META = "torch.distributed.checkpoint.metadata"
SHARD = "torch.distributed._shard.sharded_tensor.metadata"
FS = "torch.distributed.checkpoint.filesystem"


@dataclass
class ChunkStorageMetadata:
    offsets: Any = None
    sizes: Any = None


@dataclass
class TensorProperties:
    dtype: Any = None
    layout: Any = None
    requires_grad: bool = False
    memory_format: Any = None
    pin_memory: bool = False

    def __getstate__(self):
        return (self.dtype, self.layout, self.requires_grad, MEM_FORMAT_ENCODING(0), self.pin_memory)

    def __setstate__(self, state):
        self.dtype, self.layout, self.requires_grad, self.memory_format, self.pin_memory = state


class MEM_FORMAT_ENCODING:
    def __init__(self, v):
        self.value = v

    def __reduce__(self):
        return (MEM_FORMAT_ENCODING, (self.value,))


@dataclass
class TensorStorageMetadata:
    properties: Any = None
    size: Any = None
    chunks: List[ChunkStorageMetadata] = field(default_factory=list)


@dataclass
class BytesStorageMetadata:
    pass


@dataclass(frozen=True)
class MetadataIndex:
    fqn: str = ""
    offset: Any = None
    index: Optional[int] = field(hash=False, compare=False, default=None)


@dataclass
class _StorageInfo:
    relative_path: str = ""
    offset: int = 0
    length: int = 0


@dataclass
class StorageMeta:
    checkpoint_id: Any = None
    save_id: Any = None
    load_id: Any = None
    modules: Any = None


@dataclass
class Metadata:
    state_dict_metadata: Dict[str, Any] = field(default_factory=dict)
    planner_data: Any = None
    storage_data: Any = None


def _install_modules():
    """Stand-in modules under PyTorch's names, so pickle writes and reads these classes by them."""
    for name, classes in [(META, [ChunkStorageMetadata, TensorStorageMetadata, BytesStorageMetadata, MetadataIndex,
                                  StorageMeta, Metadata]),
                          (SHARD, [TensorProperties, MEM_FORMAT_ENCODING]), (FS, [_StorageInfo])]:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
        mod = sys.modules[name]
        for c in classes:
            c.__module__ = name
            c.__qualname__ = c.__name__
            setattr(mod, c.__name__, c)


_install_modules()


class _Unpickler(pickle.Unpickler):
    ALLOWED = {(META, n) for n in ["ChunkStorageMetadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                   "MetadataIndex", "StorageMeta", "Metadata"]}
    ALLOWED |= {(SHARD, "TensorProperties"), (SHARD, "MEM_FORMAT_ENCODING"), (FS, "_StorageInfo"), ("torch", "Size")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return getattr(sys.modules[module], name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):  # how torch pickles torch.strided
            return torch.serialization._get_layout
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in .metadata")


def load_metadata(d):
    with open(os.path.join(d, ".metadata"), "rb") as f:
        return _Unpickler(f).load()


def item_bytes(d, info):
    with open(os.path.join(d, info.relative_path), "rb") as f:
        f.seek(info.offset)
        b = f.read(info.length)
    assert len(b) == info.length, f"{info.relative_path}: item past the end of the file"
    return b


def coverage(size, chunks):
    """Asserts the chunks tile `size` exactly (no gap, no overlap)."""
    total = 0
    for i, a in enumerate(chunks):
        assert all(0 <= o and o + s <= g for o, s, g in zip(a.offsets, a.sizes, size)), (a, size)
        v = 1
        for s in a.sizes:
            v *= s
        total += v
        for b in chunks[i + 1:]:
            assert not all(ao < bo + bs and bo < ao + as_ for ao, as_, bo, bs in
                           zip(a.offsets, a.sizes, b.offsets, b.sizes)), f"chunks overlap: {a} {b}"
    want = 1
    for s in size:
        want *= s
    assert total == want, f"chunks cover {total} of {want} elements"


def read_checkpoint(d):
    """(tensors: fqn -> global tensor, objects: key -> torch.load'ed value, metadata)."""
    md = load_metadata(d)
    where = {(k.fqn, tuple(k.offset) if k.offset is not None else None): v for k, v in md.storage_data.items()}
    tensors, objects = {}, {}
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            objects[fqn] = torch.load(io.BytesIO(item_bytes(d, where[(fqn, None)])))
            continue
        coverage(list(m.size), m.chunks)
        out = torch.zeros(list(m.size), dtype=m.properties.dtype)
        for c in m.chunks:
            t = torch.load(io.BytesIO(item_bytes(d, where[(fqn, tuple(c.offsets))])))
            assert list(t.shape) == list(c.sizes) and t.dtype == m.properties.dtype, (fqn, t.shape, c.sizes, t.dtype)
            view = out
            for dim, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                view = view.narrow(dim, o, s)
            view.copy_(t)
        tensors[fqn] = out
    return tensors, objects, md


def write_checkpoint(d, tensors, objects, split, files=4):
    """Writes a torch_dist dir as a multi-rank save would: tensor fqn -> global tensor, cut by
    split(fqn, shape) -> list of (offsets, sizes) chunks, spread over `files` files (rank r's
    chunks in __r_0.distcp); objects torch.save'd. Writes .metadata, not common.pt/metadata.json."""
    os.makedirs(d, exist_ok=True)
    streams = [io.BytesIO() for _ in range(files)]
    sdm, storage = {}, {}
    n = 0
    for k, v in objects.items():
        s = streams[n % files]
        b = io.BytesIO()
        torch.save(v, b)
        storage[MetadataIndex(k, None)] = _StorageInfo(f"__{n % files}_0.distcp", s.tell(), len(b.getvalue()))
        s.write(b.getvalue())
        sdm[k] = BytesStorageMetadata()
        n += 1
    for fqn, t in tensors.items():
        chunks = []
        for i, (offs, sizes) in enumerate(split(fqn, list(t.shape))):
            part = t
            for dim, (o, s) in enumerate(zip(offs, sizes)):
                part = part.narrow(dim, o, s)
            b = io.BytesIO()
            torch.save(part.clone(), b)
            s = streams[n % files]
            storage[MetadataIndex(fqn, torch.Size(offs), i)] = _StorageInfo(f"__{n % files}_0.distcp", s.tell(),
                                                                             len(b.getvalue()))
            s.write(b.getvalue())
            chunks.append(ChunkStorageMetadata(torch.Size(offs), torch.Size(sizes)))
            n += 1
        sdm[fqn] = TensorStorageMetadata(TensorProperties(t.dtype, torch.strided), torch.Size(t.shape), chunks)
    for r, s in enumerate(streams):
        with open(os.path.join(d, f"__{r}_0.distcp"), "wb") as f:
            f.write(s.getvalue())
    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(Metadata(sdm, None, storage), f)
