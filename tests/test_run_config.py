"""Run configs -> the model they train (hubert_lit.run_config), and ``profile --config`` on every YAML under configs/.

Expected sizes are the README's per-part table (checked there against torchaudio and the official configs), less
the prediction head, which the profile does not count. Models are built on the meta device, so even the full-size
presets cost no memory or time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hubert_lit.checkpoint import read_model_config
from hubert_lit.models import HubertModel
from hubert_lit.models.config import preset as preset_config
from hubert_lit.profile import cli as profile_cli
from hubert_lit.profile.counters import parameter_counts
from hubert_lit.quant.binarize import quantized_layers
from hubert_lit.run_config import RunConfigError, expand_bases, load_run_config, model_of_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
ASSETS = Path(__file__).resolve().parent / "assets"

# README "Parameters per part" (k = 100), total minus head
FULL_SIZE_PARAMS = {
    "vanilla": 92_237_696 - 223_232,
    "vanilla_wav2vec2": 94_594_176 - 223_232,
    "conformer_s": 10_089_504 - 62_864,
    "squeezeformer_xs": 10_556_352 - 62_864,
    "sparseformer_dn_s": 15_229_312 - 91_648,
    "sparseformer_sw_s": 29_582_976 - 157_440,
}
# Binarized Linear/Conv1d layers of the W1A1/W1A2 student per encoder (default QuantSpec): per block, q/k/v/out +
# 2 FFN Linears (Transformer family); 2 FFNs more and the conv module's 2 pointwise + 1 depthwise conv
# (Conformer/Squeezeformer: 11; the relative-position projection stays full precision, as positional modules do in
# every family); Squeezeformer adds its time reduction (2 convs) and recovery (1 Linear).
QUANTIZED_LAYERS = {
    "vanilla": 12 * 6,
    "conformer_s": 16 * 11,
    "squeezeformer_xs": 16 * 11 + 3,
    "sparseformer_dn_s": 16 * 6,
    "sparseformer_sw_s": 8 * 6,
}
ENCODERS = tuple(QUANTIZED_LAYERS)


def expected_models() -> dict[str, tuple[str, int | None, str | None]]:
    """config path (relative to configs/) -> (preset name, parameters or None: compared with the preset, spec)."""
    out: dict[str, tuple[str, int | None, str | None]] = {}
    for name in ENCODERS:
        out[f"model/{name}.yaml"] = (name, FULL_SIZE_PARAMS[name], None)
        out[f"model/{name}_tiny.yaml"] = (f"{name}_tiny", None, None)
        for it in ("it1", "it2"):
            out[f"pretrain/{name}_{it}.yaml"] = (name, FULL_SIZE_PARAMS[name], None)
        for bits in ("w1a2", "w1a1"):
            out[f"distill/bq_{name}_{bits}.yaml"] = (name, None, bits.upper())
    for it in ("it1", "it2"):
        out[f"pretrain/vanilla_fairseq_{it}.yaml"] = ("vanilla", FULL_SIZE_PARAMS["vanilla_wav2vec2"], None)
    out["demo.yaml"] = ("vanilla_tiny", None, None)
    out["distill/demo_w1a1.yaml"] = ("vanilla_tiny", None, "W1A1")
    return out


NOT_MODELS = sorted(
    str(p.relative_to(CONFIGS))
    for p in CONFIGS.rglob("*.yaml")
    if p.name.startswith("_") or p.parent.name in ("trainer", "sweeps", "superb")
)


def test_every_config_is_classified():
    """Each YAML under configs/ is either a model description checked below or one that must be refused."""
    every = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
    assert sorted([*expected_models(), *NOT_MODELS]) == every


def profiled_model(path: Path):
    """The model ``profile --config path`` builds (its own build function), on the meta device."""
    args = profile_cli.build_parser().parse_args(["--config", str(path)])
    with torch.device("meta"):
        return profile_cli.build_model(args)


@pytest.mark.parametrize("config", sorted(expected_models()))
def test_profile_builds_the_model_a_config_trains(config, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name run folders relative to the repository root, as users run them
    preset, params, spec = expected_models()[config]
    model = profiled_model(CONFIGS / config)
    assert model.config.name == preset
    if spec is None:
        assert model.quant_spec is None
        if params is None:  # tiny presets: the preset's size; the demo: make demo's model (tests/assets)
            if config == "demo.yaml":
                reference, _ = read_model_config(ASSETS / "demo_it1.pt")
            else:
                reference = preset_config(preset)
            with torch.device("meta"):
                params = parameter_counts(HubertModel(reference))["total"]
        assert parameter_counts(model)["total"] == params
    else:
        assert model.quant_spec is not None and model.quant_spec.name == spec
        assert model.config.encoder.layerdrop == 0.0  # the student, as BiTDistillModule builds it
        if preset in QUANTIZED_LAYERS:
            assert len(list(quantized_layers(model))) == QUANTIZED_LAYERS[preset]
            binarizer_params = parameter_counts(model)["total"] - FULL_SIZE_PARAMS[preset]
            assert 0 < binarizer_params < 0.01 * FULL_SIZE_PARAMS[preset]  # activation scales and shifts only


@pytest.mark.parametrize("config", NOT_MODELS)
def test_configs_that_describe_no_model_exit_2_naming_the_file(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert profile_cli.main(["--config", str(CONFIGS / config), "--runs", "0"]) == 2
    assert str(CONFIGS / config) in capsys.readouterr().err


def test_run_model_builds_the_binarized_student(monkeypatch):
    monkeypatch.chdir(ROOT)
    with torch.device("meta"):
        student = model_of_config(CONFIGS / "distill/bq_sparseformer_dn_s_w1a2.yaml").build()
    assert student.quant_spec.name == "W1A2"
    assert len(list(quantized_layers(student))) == QUANTIZED_LAYERS["sparseformer_dn_s"]


def test_distillation_teacher_chain_is_followed(monkeypatch):
    monkeypatch.chdir(ROOT)
    described = model_of_config(CONFIGS / "distill/bq_conformer_s_w1a1.yaml")
    names = [p.name for p in described.chain]
    assert names == ["bq_conformer_s_w1a1.yaml", "bq_conformer_s_w1a2.yaml", "conformer_s_it2.yaml"]
    assert described.kind == "distill" and described.quant_spec.activation_bits == 1
    assert described.teacher == Path("runs/bq_conformer_s_w1a2/checkpoints/last.ckpt")
    assert described.config.num_classes == 500  # iteration 2's labels


def test_existing_teacher_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(ASSETS / "demo_it1.pt", tmp_path / "teacher.pt")
    (tmp_path / "configs" / "student.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "hubert_lit.lit.distill.BiTDistillModule",
                    "init_args": {"teacher": "teacher.pt", "activation_bits": 2},
                }
            }
        )
    )
    described = model_of_config(tmp_path / "configs" / "student.yaml")
    teacher_config, _ = read_model_config(tmp_path / "teacher.pt")
    assert described.config == teacher_config.replace(encoder={"layerdrop": 0.0})
    assert described.quant_spec.name == "W1A2" and described.chain[-1] == tmp_path / "teacher.pt"


def test_missing_teacher_without_a_writing_config_exits_2_naming_both(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS / "distill", configs / "distill")
    student = configs / "distill" / "bq_vanilla_w1a1.yaml"
    assert profile_cli.main(["--config", str(student), "--runs", "0"]) == 2
    err = capsys.readouterr().err
    # w1a1's teacher is written by the copied w1a2 config, whose own teacher (iteration 2) nobody writes here
    assert str(configs / "distill" / "bq_vanilla_w1a2.yaml") in err
    assert "runs/vanilla_it2/checkpoints/last.ckpt" in err


def test_bases_compose_like_fit(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {preset: vanilla, overrides: {mask_prob: 0.5}, lr: 0.1}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {overrides: {conv_dim: 64}}\ndata: {seed: 3}\n")
    (tmp_path / "c.yaml").write_text("base: [b.yaml]\ndata: {num_workers: 1}\n")
    assert expand_bases(tmp_path / "c.yaml") == [
        tmp_path / "a.yaml",
        tmp_path / "b.yaml",
        tmp_path / "c.yaml",
    ]
    run = load_run_config(tmp_path / "c.yaml")
    assert run["model"] == {"preset": "vanilla", "overrides": {"conv_dim": 64}, "lr": 0.1}
    assert run["data"] == {"seed": 3, "num_workers": 1}
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(RunConfigError, match="include each other"):
        expand_bases(tmp_path / "loop.yaml")
    with pytest.raises(RunConfigError, match="does not exist"):
        (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
        expand_bases(tmp_path / "d.yaml")


def test_dict_valued_arguments_are_replaced_as_fit_replaces_them(tmp_path, capsys):
    """The composition rule above, checked against the CLI itself (--print_config)."""
    from hubert_lit.cli import lightning_main

    (tmp_path / "a.yaml").write_text("model: {preset: vanilla_tiny, overrides: {mask_prob: 0.5}, lr: 0.1}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {overrides: {conv_dim: 64}, num_classes: 3}\n")
    assert lightning_main(["fit", "--config", str(tmp_path / "b.yaml"), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    ours = load_run_config(tmp_path / "b.yaml")["model"]
    assert {k: printed[k] for k in ours} == ours


def test_distillation_defaults_are_the_quant_spec_defaults():
    """run_config fills missing student arguments with QuantSpec's defaults; BiTDistillModule must agree."""
    import inspect

    from hubert_lit.lit.distill import BiTDistillModule
    from hubert_lit.quant.spec import QuantSpec

    signature = inspect.signature(BiTDistillModule.__init__).parameters
    spec = QuantSpec()
    for name in ("weight_bits", "activation_bits", "quantize_attention", "ffn_relu", "binarize_depthwise"):
        assert signature[name].default == getattr(spec, name), name
    assert signature["full_precision"].default is None  # None means QuantSpec's default patterns
