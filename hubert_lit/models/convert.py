"""Import HuBERT weights from torchaudio models and from fairseq checkpoint files (fairseq not needed).

* :func:`from_torchaudio` takes ``torchaudio.models.hubert_base()`` / ``hubert_large()`` (``Wav2Vec2Model``,
  inference only) or ``hubert_pretrain_base()`` etc. (``HuBERTPretrainModel``, also mask embedding, final
  projection and label embeddings) and returns our vanilla model with the wav2vec2 front end and the same weights.
* :func:`from_fairseq` reads a released fairseq HuBERT pretraining checkpoint (``torch.load`` of a dict with the
  ``"model"`` state_dict and ``"cfg"`` or ``"args"``). fairseq's label ``Dictionary`` prepends 4 special symbols
  (``<s> <pad> </s> <unk>``), so ``label_embs_concat`` has k + 4 rows: we keep the k rows of the cluster labels
  (ordered by cluster id when the checkpoint's dictionary is readable, otherwise rows 4.. in order).

Our model normalises the first conv's GroupNorm over valid samples only; on unpadded input it computes exactly
what torchaudio and fairseq compute.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubert_lit.models.config import HubertConfig
from hubert_lit.models.encoders import EncoderConfig
from hubert_lit.models.frontend import ConvSpec, fastconv_conv_layers, wav2vec2_conv_layers
from hubert_lit.models.hubert import HubertModel

FAIRSEQ_SPECIAL_SYMBOLS = 4  # <s>, <pad>, </s>, <unk> at the front of every fairseq Dictionary


# ---------------------------------------------------------------------------------------------------------
# shared helpers


def _frontend_for(layers: list[ConvSpec]) -> tuple[str, int, int]:
    """(frontend, conv_dim, fastconv_extra_layers) whose conv list equals ``layers``; ValueError otherwise."""
    layers = [tuple(int(v) for v in spec) for spec in layers]
    dim = layers[-1][0]
    if layers == wav2vec2_conv_layers(dim):
        return "wav2vec2", dim, 1
    for extra in range(0, 4):
        if dim % 8 == 0 and layers == fastconv_conv_layers(dim, extra):
            return "fastconv", dim, extra
    raise ValueError(
        f"conv feature extractor {layers} is neither the wav2vec2 stack nor SEW WFE-C (fastconv); "
        "only those two front ends are supported"
    )


def _load_converted(config: HubertConfig, state: dict[str, torch.Tensor], source: str) -> HubertModel:
    model = HubertModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit the converted config: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# torchaudio


def _torchaudio_key(key: str) -> str:
    """Map a torchaudio Wav2Vec2Model/HuBERTPretrainModel key to ours."""
    key = key.removeprefix("wav2vec2.")
    rules = (
        (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.norm."),
        (r"encoder\.feature_projection\.", "feature_projection."),
        (r"encoder\.transformer\.pos_conv_embed\.", "pos_conv."),
        (r"encoder\.transformer\.", "encoder."),
        (r"mask_generator\.mask_embedding", "mask_embedding"),
        (r"logit_generator\.", ""),
    )
    for pattern, repl in rules:
        key, n = re.subn(f"^{pattern}", repl, key)
        if n:
            break
    return key


def from_torchaudio(model: nn.Module) -> HubertModel:
    """Our vanilla HuBERT (wav2vec2 front end) with the weights of a torchaudio HuBERT model, in eval mode.

    Accepts ``torchaudio.models.Wav2Vec2Model`` without an ``aux`` (CTC) head, e.g. ``hubert_base()`` (the result
    has no pretraining head, ``num_classes=0``), or ``HuBERTPretrainModel``, e.g. ``hubert_pretrain_base()``.
    """
    kind = type(model).__name__
    if kind == "HuBERTPretrainModel":
        w2v, pretrain = model.wav2vec2, model
    elif kind == "Wav2Vec2Model":
        w2v, pretrain = model, None
    else:
        raise ValueError(f"expected torchaudio Wav2Vec2Model or HuBERTPretrainModel, got {kind}")
    if getattr(w2v, "aux", None) is not None:
        raise ValueError(
            "fine-tuned models with an aux (CTC) head are not supported; pass the pretrained model"
        )

    convs = w2v.feature_extractor.conv_layers
    layers = [(b.conv.out_channels, b.conv.kernel_size[0], b.conv.stride[0]) for b in convs]
    frontend, conv_dim, extra = _frontend_for(layers)
    mode = "group_norm" if isinstance(convs[0].layer_norm, nn.GroupNorm) else "layer_norm"
    if mode == "layer_norm" and any(b.layer_norm is None for b in convs):
        raise ValueError("unsupported feature extractor: layer_norm mode needs a norm after every conv")
    transformer = w2v.encoder.transformer
    first = transformer.layers[0]
    pos = transformer.pos_conv_embed
    encoder = EncoderConfig(
        kind="transformer",
        num_layers=len(transformer.layers),
        dim=pos.embed_dim,
        num_heads=first.attention.num_heads,
        ffn_dim=first.feed_forward.intermediate_dense.out_features,
        dropout=transformer.dropout.p,
        attention_dropout=first.attention.dropout,
        activation_dropout=first.feed_forward.intermediate_dropout.p,
        layerdrop=transformer.layer_drop,
        layer_norm_first=first.layer_norm_first,
    )
    head: dict[str, Any] = {"num_classes": 0}
    if pretrain is not None:
        emb = pretrain.logit_generator.label_embeddings
        head = dict(
            num_classes=emb.shape[0],
            final_dim=emb.shape[1],
            feature_grad_mult=float(pretrain.feature_grad_mult or 0.0),
            mask_prob=pretrain.mask_generator.mask_prob,
            mask_length=pretrain.mask_generator.mask_length,
        )
    config = HubertConfig(
        name="vanilla",
        encoder=encoder,
        frontend=frontend,
        extractor_mode=mode,
        conv_dim=conv_dim,
        fastconv_extra_layers=extra,
        conv_bias=convs[0].conv.bias is not None,
        dropout_input=w2v.encoder.feature_projection.dropout.p,
        pos_conv_kernel=pos.kernel_size,
        pos_conv_groups=pos.conv.groups,
        **head,
    )
    state = {_torchaudio_key(k): v for k, v in model.state_dict().items()}
    return _load_converted(config, state, f"torchaudio {kind}")


# ---------------------------------------------------------------------------------------------------------
# fairseq checkpoint files


class _Stub:
    """Stand-in for a class that the checkpoint references but we do not import (fairseq, omegaconf, ...)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


# Exactly the globals a torch checkpoint of plain tensors and containers needs; everything else becomes an
# inert stub. Each entry is a class or a function that only rebuilds data: none can run a command, import a
# module or reach another global (a module-wide rule such as "anything under torch" would let
# ``torch.utils.collect_env.run`` or ``torch.load`` through).
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset(
        {"set", "frozenset", "slice", "list", "dict", "tuple", "bytearray", "complex", "object"}
    ),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "argparse": frozenset({"Namespace"}),
    "copyreg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "torch": frozenset({"Size"}),
    "torch._utils": frozenset(
        {
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_tensor_v3",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
        }
    ),
}


def _allowed(module: str, name: str) -> bool:
    if "." in name:  # no attribute chains (pickle protocol 4 would follow them)
        return False
    if name in _ALLOWED_GLOBALS.get(module, ()):
        return True
    if (
        module == "torch"
    ):  # dtypes (torch.float32, ...) are pickled as globals; they are values, not callables
        return isinstance(getattr(torch, name, None), torch.dtype)
    if module == "numpy.dtypes":  # numpy >= 1.25 pickles dtypes through their classes
        import numpy

        cls = getattr(numpy.dtypes, name, None)
        return isinstance(cls, type) and issubclass(cls, numpy.dtype)
    return False


class _StubUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the exact globals of ``_ALLOWED_GLOBALS`` and stubs every other one.

    Released fairseq checkpoints hold fairseq objects (e.g. the label ``Dictionary`` in ``task_state``); stubbing
    them lets us read the file without fairseq, and a global that would run something (``os.system``,
    ``builtins.exec``, ``subprocess.Popen``, a torch function) becomes an inert stub too: calling it only records
    its arguments.
    """

    def find_class(self, module: str, name: str) -> Any:
        if _allowed(module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return type(name, (_Stub,), {"__module__": module})


class _StubPickleModule:
    """The ``pickle_module`` argument for ``torch.load``."""

    Unpickler = _StubUnpickler
    __name__ = "hubert_lit_stub_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _StubUnpickler(file, **kwargs).load()


def _plain(value: Any) -> Any:
    """Turn Namespaces, stubbed OmegaConf containers and nested mappings into plain Python values."""
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, _Stub):
        state = value.__dict__
        if "_content" in state:  # omegaconf DictConfig/ListConfig or a node
            return _plain(state["_content"])
        if "_val" in state:  # omegaconf ValueNode
            return _plain(state["_val"])
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _parse_conv_layers(text: str) -> list[ConvSpec]:
    """Evaluate fairseq's ``conv_feature_layers`` string (list/tuple literals, ``+`` and ``*`` only)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported syntax in conv_feature_layers: {ast.dump(node)}")

    layers = ev(ast.parse(text, mode="eval"))
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride) tuples, got {text!r}")
    return layers


def _fairseq_key(key: str) -> str | None:
    """Map a fairseq HubertModel key to ours; None for keys without a counterpart we keep."""
    rules = (
        (
            r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$",
            r"feature_extractor.conv_layers.\1.conv.\2",
        ),
        (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.norm.\1"),
        (
            r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
            r"feature_extractor.conv_layers.\1.norm.\2",
        ),
        (r"layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
        (r"post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
        (r"encoder\.pos_conv\.0\.bias$", "pos_conv.conv.bias"),
        (
            r"encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)$",
            "pos_conv.conv.parametrizations.weight.original0",
        ),
        (
            r"encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)$",
            "pos_conv.conv.parametrizations.weight.original1",
        ),
        (r"encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
        (
            r"encoder\.layers\.(\d+)\.self_attn\.(k|v|q|out)_proj\.(weight|bias)$",
            r"encoder.layers.\1.attention.\2_proj.\3",
        ),
        (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
        (
            r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)$",
            r"encoder.layers.\1.feed_forward.intermediate_dense.\2",
        ),
        (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
        (
            r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$",
            r"encoder.layers.\1.final_layer_norm.\2",
        ),
        (r"mask_emb$", "mask_embedding"),
        (r"final_proj\.(weight|bias)$", r"final_proj.\1"),
    )
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _fairseq_label_rows(checkpoint: dict[str, Any], num_rows: int, path: Path) -> list[int]:
    """Rows of ``label_embs_concat`` for clusters 0..k-1, from the task's Dictionary if readable."""
    task_state = _plain(checkpoint.get("task_state"))
    dictionaries = task_state.get("dictionaries") if isinstance(task_state, Mapping) else None
    symbols = None
    if isinstance(dictionaries, (list, tuple)) and len(dictionaries) == 1:
        symbols = getattr(dictionaries[0], "symbols", None)
    if symbols is None:
        return list(range(FAIRSEQ_SPECIAL_SYMBOLS, num_rows))
    if len(symbols) != num_rows:
        raise ValueError(
            f"{path}: label dictionary has {len(symbols)} symbols but label_embs_concat has {num_rows} rows"
        )
    by_label = {int(s): i for i, s in enumerate(symbols) if isinstance(s, str) and s.isdigit()}
    if sorted(by_label) != list(range(len(by_label))):
        raise ValueError(f"{path}: label dictionary symbols are not the cluster ids 0..k-1")
    return [by_label[c] for c in range(len(by_label))]


def from_fairseq(path: str | Path) -> HubertModel:
    """Our HuBERT model, in eval mode, from a fairseq HuBERT *pretraining* checkpoint file.

    Reads ``cfg["model"]`` (or the older ``args``) for the architecture and ``cfg["criterion"]`` for the loss
    weights when present. Only single-label-set, transformer-layer models are supported (all released ones).
    The file is unpickled with fairseq/omegaconf classes replaced by inert stubs, so fairseq is not needed.
    """
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_StubPickleModule)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' state_dict)")
    cfg = _plain(checkpoint.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        model_cfg, criterion = dict(cfg["model"]), dict(cfg.get("criterion") or {})
    elif checkpoint.get("args") is not None:
        model_cfg = _plain(checkpoint["args"])
        criterion = model_cfg
    else:
        raise ValueError(f"{path}: fairseq checkpoint without 'cfg' ['model'] or 'args'")

    def get(key: str, default: Any) -> Any:
        value = model_cfg.get(key, default)
        return default if value is None else value

    state = dict(checkpoint["model"])
    if any(k.startswith("w2v_encoder.") for k in state):
        raise ValueError(f"{path}: a fine-tuned (HubertCtc) checkpoint; pass the pretraining checkpoint")
    if get("layer_type", "transformer") != "transformer":
        raise ValueError(f"{path}: layer_type {get('layer_type', '')!r} is not supported (transformer only)")
    if get("activation_fn", "gelu") != "gelu":
        raise ValueError(f"{path}: activation_fn {get('activation_fn', '')!r} is not supported (gelu only)")
    if get("target_glu", False):
        raise ValueError(f"{path}: target_glu=True is not supported")
    conv_layers = _parse_conv_layers(
        get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    )
    frontend, conv_dim, extra = _frontend_for(conv_layers)
    mode = get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"{path}: unknown extractor_mode {mode!r}")

    converted: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in state.items():
        new = _fairseq_key(key)
        if new is None:
            skipped.append(key)
        else:
            converted[new] = value
    labels = state.get("label_embs_concat")
    if "label_embs_concat" in skipped:
        skipped.remove("label_embs_concat")
    if skipped:
        raise ValueError(f"{path}: unexpected keys in the fairseq state_dict: {skipped}")
    final_dim = int(get("final_dim", 0)) or int(get("encoder_embed_dim", 768))
    num_classes = 0
    if labels is not None:
        if "final_proj.weight" in converted and converted["final_proj.weight"].shape[0] != final_dim:
            raise ValueError(
                f"{path}: final_proj has {converted['final_proj.weight'].shape[0]} outputs, "
                f"expected final_dim={final_dim} (several label sets are not supported)"
            )
        rows = _fairseq_label_rows(checkpoint, labels.shape[0], path)
        converted["label_embeddings"] = labels[rows].clone()
        num_classes = len(rows)

    def weight(key: str, default: float) -> float:
        value = criterion.get(key)
        return default if value is None else float(value)

    loss_weights = criterion.get("loss_weights")
    feature_pen_weight = 10.0 if loss_weights is None else float(loss_weights[0]) if loss_weights else 0.0
    config = HubertConfig(
        name="vanilla",
        num_classes=num_classes,
        encoder=EncoderConfig(
            kind="transformer",
            num_layers=int(get("encoder_layers", 12)),
            dim=int(get("encoder_embed_dim", 768)),
            num_heads=int(get("encoder_attention_heads", 12)),
            ffn_dim=int(get("encoder_ffn_embed_dim", 3072)),
            dropout=float(get("dropout", 0.1)),
            attention_dropout=float(get("attention_dropout", 0.1)),
            activation_dropout=float(get("activation_dropout", 0.0)),
            layerdrop=float(get("encoder_layerdrop", 0.0)),
            layer_norm_first=bool(get("layer_norm_first", False)),
        ),
        frontend=frontend,
        extractor_mode="group_norm" if mode == "default" else "layer_norm",
        conv_dim=conv_dim,
        fastconv_extra_layers=extra,
        conv_bias=bool(get("conv_bias", False)),
        feature_grad_mult=float(get("feature_grad_mult", 1.0)),
        dropout_input=float(get("dropout_input", 0.0)),
        pos_conv_kernel=int(get("conv_pos", 128)),
        pos_conv_groups=int(get("conv_pos_groups", 16)),
        mask_prob=float(get("mask_prob", 0.65)),
        mask_length=int(get("mask_length", 10)),
        final_dim=final_dim,
        logit_temp=float(get("logit_temp", 0.1)),
        pred_masked_weight=weight("pred_masked_weight", 1.0),
        pred_nomask_weight=weight("pred_nomask_weight", 0.0),
        feature_pen_weight=feature_pen_weight,
    )
    return _load_converted(config, converted, str(path))
