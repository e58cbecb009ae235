"""hubert_lit.tensor_bundle: a tree of tensors as one flat tensor per dtype plus a compressed index."""

from __future__ import annotations

import io
import json
import zlib

import pytest
import torch

from hubert_lit.tensor_bundle import MAX_INDEX_BYTES, bundle, unbundle


def _index(tree_json: str | bytes) -> torch.Tensor:
    data = tree_json.encode() if isinstance(tree_json, str) else tree_json
    return torch.frombuffer(bytearray(zlib.compress(data)), dtype=torch.uint8)


def test_round_trip_keeps_every_tensor_value_and_plain_value():
    g = torch.Generator().manual_seed(0)
    tree = {
        "state_dict": {
            "a.weight": torch.randn(3, 4, generator=g),
            "a.scale": torch.tensor(0.25),  # 0-d
            "b.half": torch.randn(5, generator=g).half(),
            "b.bf16": torch.randn(2, 2, generator=g).bfloat16(),
            "flags": torch.tensor([True, False]),
            "empty": torch.zeros(0, 7),
            "count": torch.tensor([3], dtype=torch.int64),
        },
        "packed": {"layer": {"bits": 1, "shape": [4, 8], "codes": torch.arange(4, dtype=torch.uint8)}},
        "note": None,
    }
    tensors, index = bundle(tree)
    assert set(tensors) == {"float32", "float16", "bfloat16", "bool", "int64", "uint8"}
    assert all(t.dim() == 1 for t in tensors.values())
    buffer = io.BytesIO()
    torch.save({"tensors": tensors, "index": index}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)
    back = unbundle(stored["tensors"], stored["index"])
    assert back.keys() == tree.keys() and back["note"] is None
    assert back["packed"]["layer"]["bits"] == 1 and back["packed"]["layer"]["shape"] == [4, 8]
    assert torch.equal(back["packed"]["layer"]["codes"], tree["packed"]["layer"]["codes"])
    assert list(back["state_dict"]) == list(tree["state_dict"])  # order kept
    for key, want in tree["state_dict"].items():
        got = back["state_dict"][key]
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), key


def test_bundle_refuses_what_it_cannot_store():
    with pytest.raises(TypeError, match=r"<root>\.x: cannot bundle a complex64 tensor"):
        bundle({"x": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match=r"<root>\.x: cannot bundle a set"):
        bundle({"x": {1, 2}})
    with pytest.raises(ValueError, match="reserved"):
        bundle({"x": {"@tensor": 1}})


@pytest.mark.parametrize(
    "index, message",
    [
        (torch.zeros(3, dtype=torch.int64), "1-D uint8 tensor"),
        (torch.tensor([1, 2, 3], dtype=torch.uint8), "damaged bundle index"),
        (_index(b"\xff\xfe not json"), "damaged bundle index"),
        (_index("[1, 2]"), "does not hold a dict"),
        (_index('{"w": {"@tensor": ["float32", 0, [2, 3]]}}'), "lie outside the bundled float32 tensor"),
        (_index('{"w": {"@tensor": ["float32", -1, [1]]}}'), "bad tensor reference"),
        (_index('{"w": {"@tensor": ["float32", 0, [true]]}}'), "bad tensor reference"),
        (_index('{"w": {"@tensor": ["int8", 0, [1]]}}'), "no bundled 'int8' tensor"),
        (_index(b" " * (MAX_INDEX_BYTES + 1)), "larger than"),  # a decompression bomb stops at the limit
    ],
)
def test_hostile_index_is_refused_naming_the_source(index, message):
    with pytest.raises(ValueError, match=f"file.pt: .*{message}"):
        unbundle({"float32": torch.zeros(4)}, index, "file.pt")


def test_hostile_tensors_entry_is_refused():
    index = _index(json.dumps({"w": {"@tensor": ["float32", 0, [1]]}}))
    for tensors in ({"float32": torch.zeros(2, 2)}, {"float32": torch.zeros(2, dtype=torch.int32)}, {"x": 1}):
        with pytest.raises(ValueError, match="file.pt: bundled tensors entry"):
            unbundle(tensors, index, "file.pt")
    with pytest.raises(ValueError, match="file.pt: the bundled tensors must be a dict"):
        unbundle([torch.zeros(1)], index, "file.pt")
