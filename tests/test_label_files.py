import json

import numpy as np
import pytest

from hubert_lit.data.label_files import (
    expected_label_frames,
    labels_path,
    load_label_meta,
    load_shard_labels,
    model_frames,
    save_label_meta,
    save_shard_labels,
)


def test_meta_round_trip_and_validation(tmp_path):
    meta = {"label_rate": 100, "num_classes": 100, "features": {"kind": "mfcc", "dim": 39}}
    save_label_meta(tmp_path, meta)
    assert load_label_meta(tmp_path) == meta

    (tmp_path / "meta.json").write_text(json.dumps({"label_rate": 75, "num_classes": 100}))
    with pytest.raises(ValueError, match=r"meta\.json.*'label_rate'.*75"):
        load_label_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"label_rate": 50}))
    with pytest.raises(ValueError, match=r"meta\.json.*missing required key 'num_classes'"):
        load_label_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"label_rate": 50, "num_classes": 0}))
    with pytest.raises(ValueError, match="'num_classes'"):
        load_label_meta(tmp_path)
    with pytest.raises(ValueError, match="label_rate"):
        save_label_meta(tmp_path / "other", {"label_rate": "100", "num_classes": 5})
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_label_meta(tmp_path / "missing")


def test_shard_labels_round_trip_is_plain_npz(tmp_path):
    labels = {
        "1034-121119-0004": np.array([3, 1, 4, 1, 5], dtype=np.int16),
        "file": np.arange(7, dtype=np.int64),
    }
    path = save_shard_labels(tmp_path, "shard-000000", labels)
    assert path == labels_path(tmp_path, "shard-000000") == tmp_path / "shard-000000.labels.npz"
    loaded = load_shard_labels(tmp_path, "shard-000000")
    assert loaded.keys() == labels.keys()
    for key, values in labels.items():
        assert loaded[key].dtype == values.dtype
        np.testing.assert_array_equal(loaded[key], values)
    with np.load(path) as npz:  # readable by numpy alone, as contract 3 promises
        np.testing.assert_array_equal(npz["1034-121119-0004"], labels["1034-121119-0004"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.labels.npz"]  # no temp file left


def test_shard_labels_reject_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"\[a-1-2\].*1-D"):
        save_shard_labels(tmp_path, "shard-000000", {"a-1-2": np.zeros((2, 3), dtype=np.int32)})
    with pytest.raises(ValueError, match=r"\[a-1-2\].*integers"):
        save_shard_labels(tmp_path, "shard-000000", {"a-1-2": np.zeros(3, dtype=np.float32)})
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="shard-000009"):
        load_shard_labels(tmp_path, "shard-000009")
    np.savez(tmp_path / "shard-000001.labels.npz", **{"x-1-2": np.ones(4)})
    with pytest.raises(ValueError, match=r"shard-000001\.labels\.npz \[x-1-2\].*integers"):
        load_shard_labels(tmp_path, "shard-000001")


def test_expected_label_frames():
    # 50 Hz: floor((n - 400) / 320) + 1; 100 Hz: floor((n - 400) / 160) + 1; fewer than 400 samples: none.
    assert [expected_label_frames(n, 50) for n in (399, 400, 719, 720, 16000)] == [0, 1, 1, 2, 49]
    assert [expected_label_frames(n, 100) for n in (399, 400, 559, 560, 16000)] == [0, 1, 1, 2, 98]
    assert model_frames(250000) == 781  # fairseq's max_sample_size gives 781 frames
    with pytest.raises(ValueError, match="label_rate"):
        expected_label_frames(16000, 25)
