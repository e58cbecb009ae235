"""``binarize(model, spec)``: turn a full-precision HuBERT model into its BiT-quantized student, in place.

Sites under the default :class:`QuantSpec` (unless a ``full_precision`` pattern keeps them). One rule per kind of
layer, whatever the encoder family (``docs/quantization.md``, "Fairness of the comparison"):

==========================================  =============  =============================================
module                                      weights        input activation
==========================================  =============  =============================================
``nn.Linear`` (q/k/v/out, FFN, recovery)    1 scale/tensor signed ``{-a, a}``, shift per input feature
FFN second Linear (with ``ffn_relu``)       1 scale/tensor unsigned ``{0, a}`` (its input follows a ReLU)
pointwise ``nn.Conv1d`` (kernel 1)          1 scale/tensor signed, shift per input channel (a Linear)
depthwise ``nn.Conv1d`` (conv module,       1 scale/chan.  signed, shift per channel; exact zeros (padded
time reduction)                                            frames, zeroed by the caller) stay zero
attention ``q_hook``/``k_hook``/``v_hook``  -              signed, shift per feature (both attention
                                                           matmuls become binary x binary)
attention ``prob_hook``                     -              unsigned ``{0, a}``, no shift, after dropout
positional modules (``pos_conv``,           full precision full precision
``linear_pos`` + ``pos_hook``)
==========================================  =============  =============================================

With ``ffn_relu`` the feed-forward's GELU/Swish becomes ReLU (BiT). The spec's switches restore 0.1.0's choices
as ablations (per-channel pointwise convs, binarized relative positions, dropout after the probability
binarizer, no minimum offset). The spec is stored on the model as ``model.quant_spec`` so a file can carry it;
:func:`apply_stored_spec` is the loader's side.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from hubert_lit.models.attention import MultiHeadAttention
from hubert_lit.models.layers import FeedForward
from hubert_lit.quant.modules import (
    ActivationQuantizer,
    BinaryConv1d,
    BinaryLinear,
    conv1d_geometry,
    make_activation_quantizer,
)
from hubert_lit.quant.spec import FULL_PRECISION_ACTIVATIONS, QuantSpec

SIGNED_HOOKS = ("q_hook", "k_hook", "v_hook", "pos_hook")
UNSIGNED_HOOKS = ("prob_hook",)


@dataclass(frozen=True)
class Site:
    """One place ``binarize`` changes: a layer (``linear``/``conv``/``depthwise``), a hook or an activation.

    ``per_channel``: the layer's weights get one scale and mean per output channel (else one per tensor).
    """

    name: str
    kind: str  # "linear" | "conv" | "depthwise" | "hook" | "relu"
    signed: bool = True
    per_channel: bool = False


def _is_depthwise(conv: nn.Conv1d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def _is_pointwise(conv: nn.Conv1d) -> bool:
    return conv.kernel_size[0] == 1 and conv.groups == 1


def _positional_modules(model: nn.Module) -> set[str]:
    """Names of the relative-position projection and operand of every attention module with relative positions."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention) and module.relative_positions:
            names.update({f"{name}.linear_pos", f"{name}.pos_hook"})
    return names


def quantization_plan(model: nn.Module, spec: QuantSpec | None = None) -> list[Site]:
    """Every site :func:`binarize` would change in ``model`` under ``spec``, in module order."""
    spec = spec or QuantSpec()
    unsigned_inputs: set[str] = set()
    positional = set() if spec.binarize_relative_positions else _positional_modules(model)
    sites: list[Site] = []
    for name, module in model.named_modules():
        if isinstance(module, FeedForward) and spec.ffn_relu and not spec.keeps_full_precision(name):
            if not isinstance(module.activation, nn.ReLU):
                sites.append(Site(f"{name}.activation", "relu"))
        if isinstance(module, FeedForward) and (spec.ffn_relu or isinstance(module.activation, nn.ReLU)):
            unsigned_inputs.add(f"{name}.output_dense")
    for name, module in model.named_modules():
        if not name or spec.keeps_full_precision(name) or name in positional:
            continue
        if isinstance(module, (BinaryLinear, BinaryConv1d, ActivationQuantizer)):
            raise ValueError(f"model is already quantized (found {type(module).__name__} at {name!r})")
        if isinstance(module, (nn.Linear, nn.Conv1d)) and parametrize.is_parametrized(module):
            raise ValueError(
                f"{name!r} is a reparametrized layer (e.g. weight norm) and cannot be quantized; "
                "add it to QuantSpec.full_precision"
            )
        if isinstance(module, nn.Linear):
            sites.append(Site(name, "linear", signed=name not in unsigned_inputs))
        elif isinstance(module, nn.Conv1d):
            if _is_depthwise(module):
                if spec.binarize_depthwise:
                    sites.append(Site(name, "depthwise", per_channel=True))
            else:
                per_channel = not _is_pointwise(module) or spec.pointwise_conv_scale == "channel"
                sites.append(Site(name, "conv", per_channel=per_channel))
        elif isinstance(module, MultiHeadAttention) and spec.quantize_attention:
            if spec.activation_bits == FULL_PRECISION_ACTIVATIONS:
                continue
            for hook in SIGNED_HOOKS + UNSIGNED_HOOKS:
                if hook == "pos_hook" and not module.relative_positions:
                    continue
                hook_name = f"{name}.{hook}"
                if not spec.keeps_full_precision(hook_name) and hook_name not in positional:
                    sites.append(Site(hook_name, "hook", signed=hook in SIGNED_HOOKS))
    return sites


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _new_module(site: Site, old: nn.Module, spec: QuantSpec, parent: nn.Module) -> nn.Module:
    bits, offset = spec.activation_bits, spec.unsigned_min_offset
    if site.kind == "relu":
        return nn.ReLU()
    # new quantizers go where the layer's weight lives (binarizing a model already on the GPU)
    if site.kind == "linear":
        quant = make_activation_quantizer(
            bits, site.signed, channels=old.in_features, channel_dim=-1, min_offset=offset
        )
        return BinaryLinear.from_float(old, spec.weight_bits, quant.to(old.weight.device))
    if site.kind in ("conv", "depthwise"):
        quant = make_activation_quantizer(
            bits,
            site.signed,
            channels=old.in_channels,
            channel_dim=1,
            keep_zeros=site.kind == "depthwise",
            min_offset=offset,
        )
        return BinaryConv1d.from_float(old, spec.weight_bits, quant.to(old.weight.device), site.per_channel)
    if site.kind == "hook":
        channels = parent.embed_dim if site.signed else None  # probabilities have no fixed channel axis
        quant = ActivationQuantizer(bits, site.signed, channels=channels, channel_dim=-1, min_offset=offset)
        return quant.to(next(parent.parameters()).device)
    raise ValueError(f"unknown site kind {site.kind!r}")


def binarize(model: nn.Module, spec: QuantSpec | None = None) -> nn.Module:
    """Quantize ``model`` in place following ``spec`` (default: BiT W1A1) and return it.

    Quantized layers share the original weight and bias parameters (the latent full-precision weights).
    New activation quantizers start uninitialised: their scale is set by the first batch seen in training mode.
    """
    spec = spec or QuantSpec()
    if getattr(model, "quant_spec", None) is not None:
        raise ValueError(
            f"model is already quantized ({model.quant_spec.name}); binarize a full-precision model"
        )
    for site in quantization_plan(model, spec):
        parent_name, child = _split(site.name)
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        new = _new_module(site, old, spec, parent)
        if isinstance(old, nn.Module):
            new.train(old.training)
        setattr(parent, child, new)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.dropout_before_prob_hook = spec.dropout_before_prob_binarizer
    model.quant_spec = spec
    return model


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, ActivationQuantizer]]:
    """``(name, quantizer)`` for every activation quantizer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer):
            yield name, module


@contextmanager
def calibrating_scales(model: nn.Module) -> Iterator[int]:
    """Inside the block, forward passes set every uninitialised activation scale from their batch, as the first
    training batch would, while the rest of the model stays as it is (eval mode: no dropout, no LayerDrop). For
    profiling and timing untrained models; yields how many scales it will set."""
    pending = [q for _, q in activation_quantizers(model) if not q.is_initialized()]
    modes = [q.training for q in pending]
    for quant in pending:
        quant.train()
    try:
        yield len(pending)
    finally:
        for quant, mode in zip(pending, modes):
            quant.train(mode)


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLinear | BinaryConv1d]]:
    """``(name, layer)`` for every layer with quantized weights in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, (BinaryLinear, BinaryConv1d)):
            yield name, module


def dequantize(model: nn.Module) -> nn.Module:
    """Undo :func:`binarize` in place: quantized layers become ``nn.Linear``/``nn.Conv1d`` with their latent
    weights and attention hooks become ``nn.Identity``. ReLUs introduced by ``ffn_relu`` stay."""
    replaced: set[str] = set()
    for name, module in list(model.named_modules()):
        if isinstance(module, BinaryLinear):
            plain: nn.Module = nn.Linear(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
        elif isinstance(module, BinaryConv1d):
            plain = nn.Conv1d(
                **conv1d_geometry(module),
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
        elif isinstance(module, ActivationQuantizer):
            plain = nn.Identity()
        else:
            continue
        if isinstance(module, (BinaryLinear, BinaryConv1d)):
            plain.weight, plain.bias = module.weight, module.bias
            replaced.add(name)
        parent_name, child = _split(name)
        parent = model.get_submodule(parent_name)
        if isinstance(module, ActivationQuantizer) and child == "input_quant" and parent_name in replaced:
            continue  # went away with its layer (``parent`` is already the plain replacement)
        plain.train(module.training)
        setattr(parent, child, plain)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.dropout_before_prob_hook = True
    model.quant_spec = None
    return model


def requantize(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Re-quantize an already quantized ``model`` with another ``spec`` (e.g. W1A2 -> W1A1), in place.

    Latent weights and the learned activation shifts carry over; the activation scales start uninitialised,
    because a scale learned for one bit width does not fit another.
    """
    shifts = {
        name: q.shift.detach().clone() for name, q in activation_quantizers(model) if q.shift is not None
    }
    if getattr(model, "quant_spec", None) is not None:
        dequantize(model)
    binarize(model, spec)
    for name, quant in activation_quantizers(model):
        if quant.shift is not None and name in shifts and shifts[name].shape == quant.shift.shape:
            quant.shift.data.copy_(shifts[name])
    return model


def apply_stored_spec(model: nn.Module, stored: dict | QuantSpec | None) -> nn.Module:
    """Quantize a freshly built model as a checkpoint's ``"quant_spec"`` entry says (no-op for ``None``).

    Call it before ``load_state_dict``: the stored state then restores the trained scales, shifts and their
    ``initialized`` flags.
    """
    if stored is None:
        return model
    return binarize(model, stored if isinstance(stored, QuantSpec) else QuantSpec.from_dict(dict(stored)))
