"""The compile-clean step: the training forward + loss of every tiny preset is one graph (no host read), the
binarized model's too (bf16 autocast), a host read put back breaks the capture, and the Lightning modules' steps
read at most one value back per step (the gradient norm's isfinite).

Captures use ``torch.compile(fullgraph=True, backend="aot_eager")``: it fails on any graph break and needs no C++
compiler; the inductor compile is the one slow test.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hubert_lit.lit.losses import batch_objective, prediction_terms
from hubert_lit.models import HubertModel, build_hubert
from hubert_lit.quant import activation_quantizers, binarize

TINY = [
    "vanilla_tiny",
    "conformer_s_tiny",
    "squeezeformer_xs_tiny",
    "sparseformer_dn_s_tiny",
    "sparseformer_sw_s_tiny",
]
SAMPLES = 8000
NUM_CLASSES = 10


def _batch(
    model: HubertModel, padded: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(2, SAMPLES, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (2, model.num_frames(SAMPLES)), generator=g)
    if not padded:
        return waves, None, labels
    lengths = torch.tensor([SAMPLES, SAMPLES - 1700])
    waves[1, SAMPLES - 1700 :] = 0.0
    labels[1, model.num_frames(SAMPLES - 1700) :] = -100
    return waves, lengths, labels


def _training_loss(model: HubertModel, waves, lengths, labels, layer_keep):
    """The training forward + loss as the pretraining module runs it."""
    out = model(waves, lengths, labels, layer_keep=layer_keep, validate=False)
    return batch_objective(model.config, prediction_terms(out))


# Ops that read a tensor's value back to the host: each one a host-device sync on a GPU. (With fullgraph=True a
# plain .item() no longer breaks the graph on recent torch: it is captured as one of these.)
HOST_READ_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item")


class Capture:
    """``torch.compile(fullgraph=True)`` backend: ``aot_eager`` (AOTAutograd's forward and backward graphs, run
    as they are) that also records every host-read op of those graphs in ``reads``."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def _inspect(self, graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            schema = getattr(node.target, "_schema", None)
            if node.op == "call_function" and schema is not None and schema.name in HOST_READ_OPS:
                self.reads.append(
                    f"{schema.name} ({node.meta.get('stack_trace', '').strip().splitlines()[-1:]})"
                )
        return graph_module

    def __call__(self, graph_module, example_inputs):
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=self._inspect, bw_compiler=self._inspect)(
            graph_module, example_inputs
        )


def _capture(fn, capture: Capture | None = None):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=capture or Capture())


@pytest.mark.parametrize("frontend, padded", [("wav2vec2", True), ("fastconv", False)])
@pytest.mark.parametrize("name", TINY)
def test_training_forward_and_loss_is_one_graph(name, frontend, padded):
    model = build_hubert(name, NUM_CLASSES, frontend=frontend).train()
    waves, lengths, labels = _batch(model, padded)
    capture = Capture()
    loss = _capture(_training_loss, capture)(model, waves, lengths, labels, model.draw_layer_keep())
    loss.backward()
    assert capture.reads == []
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad  # LayerDrop as a gate: even a dropped block's parameters get a gradient


def test_compiled_forward_equals_eager():
    """Same mask, no dropout: the compiled graph (logits for every frame) gives the eager loss and gradients."""
    model = build_hubert("conformer_s_tiny", NUM_CLASSES).eval()
    waves, lengths, labels = _batch(model, padded=True)
    mask = model.compute_mask(
        model.frame_lengths(lengths), model.num_frames(SAMPLES), torch.Generator().manual_seed(1)
    )

    def loss_and_grads(fn):
        model.zero_grad()
        out = fn(waves, lengths, labels, mask)
        loss = batch_objective(model.config, prediction_terms(out))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    def forward(w, n, y, m):
        return model(w, n, y, mask=m, validate=False)

    eager_loss, eager_grads = loss_and_grads(forward)
    compiled_loss, compiled_grads = loss_and_grads(_capture(forward))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


_shape_checks = HubertModel._check_shapes


def _old_length_check(self, waveforms, lengths, labels, mask):
    if lengths is not None and bool((lengths > waveforms.shape[1]).any()):  # 0.1.0's validator: a read
        raise ValueError("lengths too long")
    return _shape_checks(self, waveforms, lengths, labels, mask)


def _old_layerdrop(encoder, index, layer_keep, block, x, *args):
    return x if bool(torch.rand(()) < 0.5) else block(x, *args)  # 0.1.0: one host draw per block


def _item_in_loss(out):
    terms = _prediction_terms(out)
    terms.masked_frames = torch.tensor(terms.masked_frames.item())  # a count read back
    return terms


_prediction_terms = prediction_terms


@pytest.mark.parametrize(
    "target, replacement",
    [
        ("hubert_lit.models.hubert.HubertModel._check_shapes", _old_length_check),
        ("hubert_lit.models.encoders._run_block", _old_layerdrop),
        ("prediction_terms", _item_in_loss),  # in this module, used by _training_loss
    ],
)
def test_a_host_read_put_back_breaks_the_capture(monkeypatch, target, replacement):
    model = build_hubert("vanilla_tiny", NUM_CLASSES).train()
    waves, lengths, labels = _batch(model, padded=True)
    if "." in target:
        monkeypatch.setattr(target, replacement)
    else:
        monkeypatch.setitem(globals(), target, replacement)
    capture = Capture()
    try:  # a read that steers Python control flow breaks the graph; one that does not is captured as a read op
        _capture(_training_loss, capture)(model, waves, lengths, labels, model.draw_layer_keep())
    except torch._dynamo.exc.TorchDynamoException:
        return
    assert capture.reads, "the host read went unnoticed"


def test_binarized_model_is_one_graph_under_bf16_autocast():
    """Explicit attention with quantizer hooks (relative positions too), binary layers (depthwise convs too) and
    activation scales, once initialised by a training batch."""
    model = binarize(build_hubert("conformer_s_tiny", NUM_CLASSES)).train()
    waves, lengths, labels = _batch(model, padded=True)
    model(waves, lengths, labels)  # initialises every activation scale (reads the batch's statistics)
    assert all(q.is_initialized() for _, q in activation_quantizers(model))

    def step(w, n, y, keep):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _training_loss(model, w, n, y, keep)

    capture = Capture()
    loss = _capture(step, capture)(waves, lengths, labels, model.draw_layer_keep())
    loss.backward()
    assert capture.reads == []
    assert torch.isfinite(loss)
    assert all(q.alpha.grad is not None for _, q in activation_quantizers(model))


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager():
    model = build_hubert("sparseformer_dn_s_tiny", NUM_CLASSES).eval()
    waves, lengths, labels = _batch(model, padded=True)
    mask = model.compute_mask(
        model.frame_lengths(lengths), model.num_frames(SAMPLES), torch.Generator().manual_seed(2)
    )

    def loss(w, n, y, m):
        return batch_objective(model.config, prediction_terms(model(w, n, y, mask=m, validate=False)))

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    torch.testing.assert_close(
        compiled(waves, lengths, labels, mask), loss(waves, lengths, labels, mask), rtol=1e-4, atol=1e-5
    )


# ----------------------------------------------------------------------------------------------- the modules' steps
class HostReads(TorchDispatchMode):
    """Counts ops that read a tensor's value back to the host (``.item()``, ``bool()``, ``int()``, ``tolist()``
    end in ``aten._local_scalar_dense``; boolean indexing in ``nonzero``): each one a sync on a GPU."""

    READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select")

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountHostReads(pl.Callback):
    """Host reads of the module's step, for steps >= ``start`` (earlier steps compile the graph and, for
    distillation, initialise the activation scales): from the start of a training batch (already on the device)
    through the module's ``on_before_optimizer_step``, i.e. forward, loss, backward and the non-finite guard. The
    optimizer step is torch's (fused AdamW on CUDA reads nothing; CPU AdamW reads its CPU step counters)."""

    def __init__(self, start: int) -> None:
        self.start, self.per_step, self._mode = start, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step >= self.start:
            self._mode = HostReads()
            self._mode.__enter__()

    def watch(self, module: pl.LightningModule) -> None:
        guard = module.on_before_optimizer_step

        def counted_guard(optimizer):
            guard(optimizer)
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self.per_step.append(self._mode.count)
                self._mode = None

        module.on_before_optimizer_step = counted_guard


def _batches(count: int, padded: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    frames = (SAMPLES - 400) // 320 + 1
    out = []
    for _ in range(count):
        lengths = torch.tensor([SAMPLES, SAMPLES - 960 if padded else SAMPLES])
        labels = torch.randint(0, 4, (2, frames), generator=g)
        out.append({"waveforms": torch.randn(2, SAMPLES, generator=g), "lengths": lengths, "labels": labels})
    return out


def _fit(module: pl.LightningModule, batches: list[dict], start: int) -> list[int]:
    counter = CountHostReads(start)
    counter.watch(module)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1000,  # no logging step among the counted ones
        gradient_clip_val=10.0,
        callbacks=[counter],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    torch._dynamo.reset()
    trainer.fit(module, loader)
    return counter.per_step


@pytest.mark.parametrize("padded", [False, True])
def test_compiled_pretraining_step_reads_one_value_per_step(padded, monkeypatch):
    from hubert_lit.lit.pretrain import HubertPretrainModule

    monkeypatch.setattr(HubertPretrainModule, "compile_backend", "aot_eager")
    module = HubertPretrainModule("vanilla_tiny", num_classes=4, lr=1e-3, warmup_steps=1, compile=True)
    per_step = _fit(module, _batches(5, padded), start=2)
    assert per_step == [1, 1, 1]  # the gradient norm's isfinite, nothing else


def test_compiled_distillation_step_reads_one_value_per_step(tmp_path, monkeypatch):
    from hubert_lit.checkpoint import save_model
    from hubert_lit.lit.distill import BiTDistillModule

    teacher = tmp_path / "teacher.pt"
    save_model(build_hubert("vanilla_tiny", 4), teacher)
    monkeypatch.setattr(BiTDistillModule, "compile_backend", "aot_eager")
    module = BiTDistillModule(teacher=str(teacher), lr=1e-3, quant_lr=1e-3, warmup_steps=1, compile=True)
    per_step = _fit(module, _batches(4, padded=True), start=2)
    assert per_step == [1, 1]
    assert (
        "train" in module._compiled
    )  # the steps after the first (which initialises the scales) ran compiled
