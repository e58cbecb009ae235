"""A nested dict of tensors stored as one flat tensor per dtype plus a compressed index.

``torch.save`` pickles a name, a shape and a rebuild call for every tensor, about 130 bytes each. A packed export
of Conformer-S holds ~1,400 tensors (biases, norms, activation scales, per-layer weight codes) in 5.7 MB, so that
bookkeeping alone added 3 % to the file. :func:`bundle` turns the tree into

* ``tensors``: ``{"float16": 1-D tensor, "uint8": 1-D tensor, ...}``, every tensor of one dtype back to back, and
* ``index``: a zlib-compressed JSON copy of the tree (a uint8 tensor) in which each tensor is replaced by
  ``{"@tensor": [dtype, offset, shape]}``; plain values (ints, floats, strings, lists, None) stay as they are.

:func:`unbundle` rebuilds the tree, with tensors as views of the flat ones. Both entries are plain tensors, so the
result goes through ``torch.load(weights_only=True)``; the index is read as hostile input (size-limited
decompression, every offset and shape checked against its flat tensor).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch

TENSOR_TAG = "@tensor"
MAX_INDEX_BYTES = 64 << 20  # decompressed; a real index is a few hundred kB at most
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def bundle(tree: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(tensors, index)`` for a nested dict of tensors and plain values (see the module docstring)."""
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = str(value.dtype).removeprefix("torch.")
            if name not in _DTYPES:
                raise TypeError(f"{where}: cannot bundle a {name} tensor")
            flat = value.detach().cpu().reshape(-1)
            offset = sizes.get(name, 0)
            parts.setdefault(name, []).append(flat)
            sizes[name] = offset + flat.numel()
            return {TENSOR_TAG: [name, offset, list(value.shape)]}
        if isinstance(value, Mapping):
            if not all(isinstance(key, str) for key in value):
                raise TypeError(f"{where}: dict keys must be strings")
            if TENSOR_TAG in value:
                raise ValueError(f"{where}: the key {TENSOR_TAG!r} is reserved")
            return {key: encode(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{where}: cannot bundle a {type(value).__name__}")

    tree_json = json.dumps(encode(tree, "<root>"), separators=(",", ":"), allow_nan=False)
    index = torch.frombuffer(bytearray(zlib.compress(tree_json.encode(), 9)), dtype=torch.uint8)
    tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
    return tensors, index


def unbundle(tensors: Any, index: Any, source: str = "<bundle>") -> dict[str, Any]:
    """The tree that :func:`bundle` stored; ``ValueError`` naming ``source`` for anything malformed."""
    if not isinstance(index, torch.Tensor) or index.dtype != torch.uint8 or index.dim() != 1:
        raise ValueError(f"{source}: the bundle index must be a 1-D uint8 tensor")
    if not isinstance(tensors, Mapping):
        raise ValueError(f"{source}: the bundled tensors must be a dict of dtype name -> 1-D tensor")
    for name, flat in tensors.items():
        if name not in _DTYPES or not isinstance(flat, torch.Tensor) or flat.dtype != _DTYPES[name]:
            raise ValueError(f"{source}: bundled tensors entry {name!r} is not a 1-D {name} tensor")
        if flat.dim() != 1:
            raise ValueError(f"{source}: bundled tensors entry {name!r} is not 1-D")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(index.numpy().tobytes(), MAX_INDEX_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"{source}: bundle index larger than {MAX_INDEX_BYTES} bytes")
        tree = json.loads(text)
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: damaged bundle index ({err})") from err
    if not isinstance(tree, dict):
        raise ValueError(f"{source}: the bundle index does not hold a dict")

    def decode(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            if TENSOR_TAG in value:
                return _tensor(value[TENSOR_TAG], where)
            return {key: decode(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [decode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return value

    def _tensor(ref: Any, where: str) -> torch.Tensor:
        ok = isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)
        ok = ok and _is_count(ref[1]) and isinstance(ref[2], list) and all(_is_count(d) for d in ref[2])
        if not ok:
            raise ValueError(f"{source}: {where}: bad tensor reference {ref!r}")
        name, offset, shape = ref
        if name not in tensors:
            raise ValueError(f"{source}: {where}: no bundled {name!r} tensor")
        count = math.prod(shape)
        flat = tensors[name]
        if offset + count > flat.numel():
            raise ValueError(
                f"{source}: {where}: elements {offset}..{offset + count} lie outside the bundled {name} tensor "
                f"({flat.numel()} elements)"
            )
        return flat[offset : offset + count].view(shape)

    return decode(tree, "<root>")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
