"""BiTDistillModule: a short distillation lowers the loss, scales start on a training batch, checkpoints reload."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

import hubert_lit
from hubert_lit.checkpoint import save_model
from hubert_lit.lit.distill import BiTDistillModule
from hubert_lit.lit.losses import hidden_state_mse, soft_cross_entropy
from hubert_lit.models import build_hubert
from hubert_lit.quant import activation_quantizers, quantized_layers

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 8
SAMPLES = 6400


def make_batches(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    frames = (SAMPLES - 400) // 320 + 1
    return [
        {
            "waveforms": torch.randn(2, SAMPLES, generator=g),
            "lengths": torch.tensor([SAMPLES, SAMPLES - 960]),
            "labels": torch.randint(0, NUM_CLASSES, (2, frames), generator=g),
        }
        for _ in range(count)
    ]


def loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None, shuffle=False)


def trainer(steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    teacher = build_hubert(
        "conformer_s_tiny", num_classes=NUM_CLASSES, dropout_input=0.0, **{"encoder.layerdrop": 0.0}
    )
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(teacher, path)
    return path


def eval_loss(module: BiTDistillModule, batches: list[dict]) -> float:
    module.eval()
    torch.manual_seed(123)  # the same masks for every evaluation
    with torch.no_grad():
        return sum(float(module._forward_pair(b).loss) for b in batches) / len(batches)


class ScaleProbe(pl.Callback):
    """Records whether any activation scale was initialised before the first training batch."""

    initialised_before_training: bool | None = None

    def on_train_start(self, trainer, module):
        self.initialised_before_training = any(
            q.is_initialized() for _, q in activation_quantizers(module.model)
        )


@pytest.fixture(scope="module")
def distilled(teacher_file):
    """A W1A2 student distilled for 30 steps, with a sanity-check validation batch before training."""
    torch.manual_seed(0)
    module = BiTDistillModule(
        teacher=str(teacher_file), activation_bits=2, lr=2e-3, quant_lr=1e-3, warmup_steps=3, max_steps=30
    )
    teacher_state = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    batches = make_batches(4, seed=1)
    probe = ScaleProbe()
    module.train()
    with torch.no_grad():
        module._forward_pair(batches[0])  # initialise the scales the way training would, to measure the start
    before = eval_loss(module, batches)
    for _, quant in activation_quantizers(module.model):  # un-initialise again for the sanity-check probe
        quant.initialized.fill_(False)
        quant._initialized_seen = False
    module.train()  # Lightning keeps the modules' modes at fit start
    fit = trainer(
        30,
        num_sanity_val_steps=1,
        limit_val_batches=1,
        val_check_interval=30,
        check_val_every_n_epoch=None,
        callbacks=[probe],
    )
    fit.fit(module, loader(batches), loader(make_batches(1, seed=2)))
    return {
        "module": module,
        "trainer": fit,
        "before": before,
        "after": eval_loss(module, batches),
        "teacher_state": teacher_state,
        "probe": probe,
    }


def test_distillation_lowers_the_loss(distilled):
    assert distilled["after"] < 0.5 * distilled["before"], (distilled["before"], distilled["after"])


def test_scales_are_set_by_the_first_training_batch_not_the_sanity_check(distilled):
    assert distilled["probe"].initialised_before_training is False
    assert all(q.is_initialized() for _, q in activation_quantizers(distilled["module"].model))


def test_teacher_is_frozen_in_eval_mode(distilled):
    module = distilled["module"]
    assert not module.teacher.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, distilled["teacher_state"][key]), key


def test_logged_metrics(distilled):
    metrics = distilled["trainer"].callback_metrics
    layers = {k for k in metrics if k.startswith("quant/")}
    assert layers == {f"quant/{kind}/layer_0{i}" for kind in ("pos_frac", "on_frac") for i in (0, 1)}
    assert all(0.0 < float(metrics[k]) < 1.0 for k in layers)
    for key in (
        "train/hidden_mse",
        "train/logit_kd",
        "train/student_masked_acc",
        "train/teacher_masked_acc",
        "val/student_masked_acc",
        "val/teacher_masked_acc",
    ):
        assert key in metrics, key


def test_teacher_and_student_share_the_mask(teacher_file):
    module = BiTDistillModule(teacher=str(teacher_file), max_steps=10)
    step = module._forward_pair(make_batches(1, seed=3)[0])
    s_out, t_out = step.student, step.teacher
    assert torch.equal(s_out.mask, t_out.mask) and s_out.mask.any()
    assert s_out.logits_masked.shape == t_out.logits_masked.shape


def test_optimizer_groups(teacher_file):
    module = BiTDistillModule(
        teacher=str(teacher_file), lr=1e-3, quant_lr=1e-4, weight_decay=0.01, max_steps=10
    )
    groups = module.parameter_groups()
    quant_params = {id(p) for _, q in activation_quantizers(module.model) for p in q.parameters()}
    by_lr = {g["lr"]: g for g in groups if g["weight_decay"] == 0.0}
    assert {id(p) for p in by_lr[1e-4]["params"]} == quant_params
    assert all(p.ndim == 1 for p in by_lr[1e-3]["params"])
    decayed = [g for g in groups if g["weight_decay"] > 0]
    assert len(decayed) == 1 and all(p.ndim >= 2 for p in decayed[0]["params"])
    teacher_ids = {id(p) for p in module.teacher.parameters()}
    assert not teacher_ids & {id(p) for g in groups for p in g["params"]}
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(module.model.parameters()))


def test_checkpoint_reload_and_the_w1a2_to_w1a1_chain(distilled, tmp_path):
    module, fit = distilled["module"], distilled["trainer"]
    ckpt = tmp_path / "w1a2.ckpt"
    fit.save_checkpoint(ckpt)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["quant_spec"]["activation_bits"] == 2
    assert not any(k.startswith("teacher.") for k in stored["state_dict"])

    loaded = hubert_lit.load_model(ckpt)
    assert loaded.quant_spec == module.model.quant_spec
    student = module.model.eval()
    waves, lengths = make_batches(1, seed=4)[0]["waveforms"], torch.tensor([SAMPLES, SAMPLES])
    with torch.no_grad():
        a, _ = student.extract_features(waves, lengths)
        b, _ = loaded.extract_features(waves, lengths)
    assert all(torch.equal(x, y) for x, y in zip(a, b))

    resumed = BiTDistillModule.load_from_checkpoint(ckpt)  # the teacher comes back from model.teacher
    assert all(
        torch.equal(x, y) for x, y in zip(resumed.model.state_dict().values(), student.state_dict().values())
    )

    step2 = BiTDistillModule(teacher=str(ckpt), activation_bits=1, max_steps=10)
    assert step2.teacher.quant_spec.activation_bits == 2 and step2.model.quant_spec.activation_bits == 1
    assert all(q.bits == 1 and not q.is_initialized() for _, q in activation_quantizers(step2.model))
    latent = dict(quantized_layers(loaded))
    for name, layer in quantized_layers(step2.model):
        assert torch.equal(layer.weight, latent[name].weight), name


def test_loss_helpers():
    logits = torch.randn(5, 7)
    assert float(soft_cross_entropy(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_cross_entropy(logits, torch.randn(5, 7))) > 0
    states = [torch.randn(2, 4, 3), torch.randn(2, 4, 3)]
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    other = [s.clone() for s in states]
    other[1][0, 2:] += 100.0  # padded frames do not count
    assert float(hidden_state_mse(states, other, valid)) == 0.0
    other[0][1, 0] += 1.0
    assert float(hidden_state_mse(states, other, valid)) == pytest.approx(3 / (6 * 3))


@pytest.mark.parametrize(
    "config",
    sorted(p.name for p in (ROOT / "configs" / "distill").glob("*.yaml") if not p.name.startswith("_")),
)
def test_distill_configs_parse(config, capsys):
    from hubert_lit.cli import lightning_main

    code = lightning_main(["fit", "--config", str(ROOT / "configs" / "distill" / config), "--print_config"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "hubert_lit.lit.distill.BiTDistillModule" in out


@pytest.mark.parametrize("hidden_pass", ["unmasked", "masked"])
def test_hidden_states_are_matched_on_the_chosen_pass(teacher_file, tmp_path, hidden_pass):
    """Default: the hidden-state loss and the scales' first-batch calibration see the unmasked input."""
    torch.manual_seed(0)
    teacher = build_hubert(
        "conformer_s_tiny",
        num_classes=NUM_CLASSES,
        dropout_input=0.0,
        encoder={"layerdrop": 0.0, "dropout": 0.0, "attention_dropout": 0.0},
    )
    path = tmp_path / "teacher_nodropout.pt"
    save_model(teacher, path)
    module = BiTDistillModule(teacher=str(path), hidden_pass=hidden_pass).train()
    encoder_inputs = []
    module.model.encoder.register_forward_pre_hook(lambda mod, args: encoder_inputs.append(args[0].detach()))
    batch = make_batches(1, seed=5)[0]
    step = module._forward_pair(batch)
    unmasked, _, _ = module.model._encoder_input(batch["waveforms"], batch["lengths"], None)
    first_input_unmasked = torch.equal(encoder_inputs[0], unmasked)
    assert first_input_unmasked == (hidden_pass == "unmasked")  # what the scales were initialised on
    assert len(encoder_inputs) == (2 if hidden_pass == "unmasked" else 1)
    if hidden_pass == "unmasked":
        module.eval()  # the scales are set now; compare with extract_features of both models on the same input
        step = module._forward_pair(batch)
        with torch.no_grad():
            s_states, frames = module.model.extract_features(batch["waveforms"], batch["lengths"])
            t_states, _ = module.teacher.extract_features(batch["waveforms"], batch["lengths"])
        valid = torch.arange(s_states[0].shape[1])[None] < frames[:, None]
        torch.testing.assert_close(step.hidden_mse, hidden_state_mse(s_states, t_states, valid))
    assert step.student.mask.any()  # the logit loss still comes from a span-masked pass
