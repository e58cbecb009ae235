"""Mini-SUPERB task data: the `superb-data` builder (tiny scale) and the loader in hubert_lit.superb.data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubert_lit.superb.data import TASKS, TaskDataError, load_task
from hubert_lit.superb.data import build as superb_build
from hubert_lit.superb.data.mixtures import overlap_ratio, overlap_samples
from hubert_lit.superb.data.text_tasks import IC_INTENT_GROUPS, IC_PHRASINGS, ic_text
from hubert_lit.superb.data.utterance_tasks import KS_CLASSES, PROSODY_PRESETS

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("superb") / "data"
    assert superb_build.main(["--out", str(out), "--scale", "tiny", "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def data(built):
    return {task: load_task(built, task) for task in TASKS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rebuild_is_byte_identical_whatever_the_workers(built, tmp_path):
    again = tmp_path / "again"
    assert superb_build.main(["--out", str(again), "--scale", "tiny", "--workers", "1"]) == 0
    first, second = _files(built), _files(again)
    assert sorted(first) == sorted(second)
    assert len([f for f in first if f.endswith(".flac")]) > 100
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_seed_changes_the_data(built, tmp_path):
    other = tmp_path / "seed1"
    assert superb_build.main(["--out", str(other), "--scale", "tiny", "--tasks", "sid", "--seed", "1"]) == 0
    assert not (other / "asr").exists()  # only the requested task is built
    assert (other / "sid" / "train.jsonl").read_bytes() != (built / "sid" / "train.jsonl").read_bytes()
    assert json.loads((other / "sid" / "meta.json").read_text())["seed"] == 1


def test_every_task_loads_with_matching_audio(data, built):
    for task, task_data in data.items():
        assert task_data.meta["task"] == task and task_data.meta["scale"] == "tiny" and task_data.meta["note"]
        for split, items in task_data.splits.items():
            assert items, f"{task}/{split} is empty"
            for item in items:
                info = sf.info(str(built / item["audio"]))
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert info.frames == item["num_samples"], (task, item["id"])
    assert not (built / "er").exists() and not (built / ".superb-data.partial").exists()


def test_speaker_disjoint_splits_where_superb_has_them(data):
    for task in ("asr", "pr", "ks", "ic", "sf", "asv", "sd", "prosody"):
        speakers = {}
        for split in SPLITS:
            items = data[task].splits[split]
            speakers[split] = {s for item in items for s in item.get("speakers", [item["speaker"]])} - {
                "none"
            }
        assert speakers["train"] and speakers["dev"] and speakers["test"], task
        assert not speakers["train"] & speakers["dev"], task
        assert not speakers["train"] & speakers["test"], task
        assert not speakers["dev"] & speakers["test"], task
    # SID is an utterance-level split: every speaker is a class seen in every split
    sid = data["sid"]
    for split in SPLITS:
        assert {item["label"] for item in sid.splits[split]} == set(sid.classes)
        assert all(item["label"] == item["speaker"] for item in sid.splits[split])


def test_asr_and_pr_share_audio_and_pr_has_clean_phones(data):
    asr, pr = data["asr"], data["pr"]
    for split in SPLITS:
        assert [(i["id"], i["audio"]) for i in asr.splits[split]] == [
            (i["id"], i["audio"]) for i in pr.splits[split]
        ]
        for a, p in zip(asr.splits[split], pr.splits[split]):
            assert a["text"] == a["text"].upper() and set(a["text"]) <= set(asr.meta["vocab"])
            assert p["phones"] and "SIL" not in p["phones"]
            assert not any(ch in phone for phone in p["phones"] for ch in "',%=_")  # stress marks and pauses
    texts = [i["text"] for split in SPLITS for i in asr.splits[split]]
    assert len(texts) == len(set(texts))  # every sentence once


def test_ks_has_twelve_classes_of_one_second_clips(data, built):
    ks = data["ks"]
    assert ks.meta["num_classes"] == 12 and ks.classes == list(KS_CLASSES)
    assert {item["label"] for item in ks.splits["train"]} == set(KS_CLASSES)
    for split in SPLITS:
        for item in ks.splits[split]:
            assert item["num_samples"] == 16000
            if item["label"] == "_silence_":
                assert item["speaker"] == "none" and item["word"] is None
            elif item["label"] != "_unknown_":
                assert item["word"] == item["label"]
    silence = next(i for i in ks.splits["test"] if i["label"] == "_silence_")
    word = next(i for i in ks.splits["test"] if i["label"] == "yes")
    rms = {
        k: float(np.sqrt(np.mean(ks.load_audio(i) ** 2))) for k, i in (("silence", silence), ("word", word))
    }
    assert 10 ** (-66 / 20) < rms["silence"] < 10 ** (-34 / 20)  # noise level drawn in [-65, -35] dBFS
    assert rms["word"] > 2 * rms["silence"]


def test_qbe_occurrences_are_the_document_word_events(data):
    qbe = data["qbe"]
    docs = {d["id"]: d for d in qbe.splits["docs"]}
    terms = {split: {q["text"] for q in qbe.splits[split]} for split in ("dev", "test")}
    assert terms["dev"] and terms["test"] and not terms["dev"] & terms["test"]
    query_speakers = {q["speaker"] for split in ("dev", "test") for q in qbe.splits[split]}
    assert len(query_speakers) == 1 and not query_speakers & {d["speaker"] for d in docs.values()}
    for split in ("dev", "test"):
        for query in qbe.splits[split]:
            spans = qbe.occurrences[split][query["id"]]
            assert spans, f"term {query['text']} never occurs"
            expected = [{"doc": d["id"], "start": s, "end": e} for d in qbe.splits["docs"] for w, s, e in d["words"]
                        if w == query["text"]]  # fmt: skip
            assert spans == expected
            for span in spans:
                doc = docs[span["doc"]]
                assert 0 <= span["start"] < span["end"] <= doc["num_samples"]
                assert query["text"] in doc["text"].split()
    for doc in docs.values():
        assert [w for w, _, _ in doc["words"]] == doc["text"].split()
        starts = [s for _, s, _ in doc["words"]]
        assert starts == sorted(starts)


def test_sd_overlap_and_rttm_match_segments(data, built):
    sd = data["sd"]
    for split in SPLITS:
        rttm = {}
        for line in (built / "sd" / f"{split}.rttm").read_text().splitlines():
            kind, rec, _, onset, duration, _, _, speaker, _, _ = line.split()
            assert kind == "SPEAKER"
            rttm.setdefault(rec, []).append((speaker, float(onset), float(duration)))
        assert set(rttm) == {item["id"] for item in sd.splits[split]}
        for item in sd.splits[split]:
            segments = item["segments"]
            assert sorted(k for k, _, _ in segments) == [0, 1] and len(set(item["speakers"])) == 2
            ratio = overlap_ratio(segments)
            assert 0.0 <= ratio <= 0.5 and item["overlap"] == pytest.approx(ratio, abs=1e-4)
            # boundaries come from phone events: the files keep eSpeak's trailing silence after the last phone
            assert max(e for _, _, e in segments) < item["num_samples"]
            for (k, start, end), (speaker, onset, duration) in zip(segments, rttm[item["id"]]):
                assert speaker == item["speakers"][k]
                assert onset == pytest.approx(start / 16000, abs=1e-6)
                assert duration == pytest.approx((end - start) / 16000, abs=1e-6)
            audio = sd.load_audio(item)
            first, last = min(s for _, s, _ in segments), max(e for _, _, e in segments)
            outside = np.concatenate([audio[:first], audio[last:]])
            assert np.abs(outside).max() < 0.05 < np.abs(audio[first:last]).max()


@pytest.mark.parametrize(
    "length_a, length_b, ratio",
    [(30000, 30000, 0.5), (16000, 48000, 0.25), (20000, 9000, 0.0), (5000, 70000, 0.5)],
)
def test_overlap_samples_hits_the_ratio_or_the_shorter_span(length_a, length_b, ratio):
    overlap = overlap_samples(length_a, length_b, ratio)
    achieved = overlap / (length_a + length_b - overlap)
    if overlap < min(length_a, length_b):
        assert achieved == pytest.approx(ratio, abs=1e-4)
    else:
        assert achieved <= ratio
    assert achieved <= 0.5


def test_ic_holds_out_voices_and_paraphrases(data):
    ic = data["ic"]
    phrasings = ic.meta["phrasings"]

    def possible_texts(split: str) -> set[str]:
        return {
            " ".join(ic_text(p, obj, loc).upper().rstrip(".").split())
            for _, obj, locations, group in IC_INTENT_GROUPS
            for p in phrasings[group][split]
            for loc in locations
        }

    assert {g: sorted(sum(by_split.values(), [])) for g, by_split in phrasings.items()} == {
        g: sorted(p) for g, p in IC_PHRASINGS.items()
    }
    train_texts = possible_texts("train")
    for split in ("dev", "test"):
        for item in ic.splits[split]:
            assert item["text"] in possible_texts(split) and item["text"] not in train_texts
    for item in ic.splits["train"]:
        assert item["text"] in train_texts
    assert len(ic.meta["intents"]) == 31


def test_sf_targets_tag_the_slot_values(data):
    for split in SPLITS:
        for item in data["sf"].splits[split]:
            tokens = item["target"].split()
            assert [t for t in tokens if not t.startswith(("B-", "E-"))] == item["text"].split()
            tagged, current = [], None
            for token in tokens:
                if token.startswith("B-"):
                    current = [token[2:], []]
                elif token.startswith("E-"):
                    assert current and token[2:] == current[0]
                    tagged.append([current[0], " ".join(current[1])])
                    current = None
                elif current is not None:
                    current[1].append(token)
            assert tagged == item["slots"] and tagged
            assert len(item["iob"]) == len(item["text"].split())


def test_asv_trials_and_prosody_labels(data):
    asv = data["asv"]
    for split in ("dev", "test"):
        speaker = {item["id"]: item["speaker"] for item in asv.splits[split]}
        trials = asv.trials[split]
        assert {t for t, _, _ in trials} == {0, 1}
        assert all(t == (speaker[a] == speaker[b]) for t, a, b in trials)
        assert all("label" not in item for item in asv.splits[split])
    assert asv.classes == sorted({item["label"] for item in asv.splits["train"]})
    prosody = data["prosody"]
    assert prosody.classes == list(PROSODY_PRESETS)
    for split in SPLITS:
        labels = [item["label"] for item in prosody.splits[split]]
        assert sorted(set(labels)) == sorted(PROSODY_PRESETS) and "emotion" not in json.dumps(labels)


def test_loader_names_file_and_line_of_bad_input(built, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(built / "sid", root / "sid")
    train = root / "sid" / "train.jsonl"
    lines = train.read_text().splitlines()
    for bad, message in [
        ("{not json", "invalid JSON"),
        (json.dumps({**json.loads(lines[1]), "label": "spk999"}), "not one of the classes"),
        (
            json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "num_samples"}),
            "missing key 'num_samples'",
        ),
        (json.dumps({**json.loads(lines[1]), "audio": "sid/audio/nowhere.flac"}), "does not exist"),
        (lines[0], "duplicate id"),
    ]:
        train.write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        with pytest.raises(TaskDataError, match=message) as error:
            load_task(root, "sid")
        assert f"{train}:2" in str(error.value)
    with pytest.raises(ValueError, match="prosody"):
        load_task(root, "er")
    with pytest.raises(TaskDataError, match="meta.json"):
        load_task(root, "ks")


def test_cli_rejects_er_and_existing_tasks(built, capsys):
    with pytest.raises(SystemExit):
        superb_build.main(["--out", str(built), "--tasks", "er"])
    assert "prosody" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        superb_build.main(["--out", str(built), "--tasks", "pr", "--scale", "tiny"])
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        superb_build.main(["--help"])
    text = capsys.readouterr().out
    assert all(
        option in text for option in ("--out", "--seed", "--tasks", "--scale", "--workers", "--overwrite")
    )
