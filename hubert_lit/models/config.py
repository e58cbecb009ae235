"""HubertConfig: the plain dataclass that describes a HuBERT model, and the named presets.

A config round-trips through a plain dict (:meth:`HubertConfig.to_dict` / :meth:`HubertConfig.from_dict`), so a
checkpoint stores it and rebuilds the model without YAML; ``configs/model/<name>.yaml`` holds the same dicts.

Overrides (:meth:`HubertConfig.replace`, ``build_hubert(name, **overrides)``) set any top-level field by name,
encoder fields with a nested dict (``encoder={"num_layers": 4}``, merged into the preset's encoder) or a dotted
key (``**{"encoder.num_layers": 4}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubert_lit.config_dicts import parse_fields
from hubert_lit.models.encoders import EncoderConfig
from hubert_lit.models.frontend import EXTRACTOR_MODES, FRONTENDS

# Fields that do not change what the weights compute at inference (training settings, names, the head's size).
TRAINING_FIELDS = frozenset(
    {
        "name",
        "num_classes",
        "feature_grad_mult",
        "dropout_input",
        "mask_prob",
        "mask_length",
        "min_masks",
        "final_dim",
        "logit_temp",
        "pred_masked_weight",
        "pred_nomask_weight",
        "feature_pen_weight",
    }
)
ENCODER_TRAINING_FIELDS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "layerdrop",
        "attention_backend",
        "flex_min_length",
    }
)


@dataclass
class HubertConfig:
    """Configuration of :class:`hubert_lit.models.HubertModel` (defaults: HuBERT Base, fairseq semantics).

    Front end: ``frontend`` is ``"wav2vec2"`` (7 convs) or ``"fastconv"`` (SEW WFE-C, our reading of the paper's
    "+FastConv"); ``conv_dim`` is the width of its output (fastconv uses SEW's ``c = conv_dim / 8``);
    ``fastconv_extra_layers`` is SEW's ``l``. ``pos_conv_kernel = 0`` leaves out the conv positional embedding
    (encoders with relative positions). ``num_classes = 0`` builds an inference-only model (no mask embedding,
    final projection or label embeddings).
    """

    name: str = "custom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_classes: int = 100
    # front end
    frontend: str = "fastconv"
    extractor_mode: str = "group_norm"
    conv_dim: int = 512
    fastconv_extra_layers: int = 1
    conv_bias: bool = False
    feature_grad_mult: float = 0.1
    dropout_input: float = 0.1
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    # masking
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    # prediction head and loss
    final_dim: int = 256
    logit_temp: float = 0.1
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    feature_pen_weight: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.encoder, Mapping):
            self.encoder = EncoderConfig.from_dict(dict(self.encoder))
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {FRONTENDS}, got {self.frontend!r}")
        if self.extractor_mode not in EXTRACTOR_MODES:
            raise ValueError(f"extractor_mode must be one of {EXTRACTOR_MODES}, got {self.extractor_mode!r}")
        for name in ("num_classes", "conv_dim", "fastconv_extra_layers", "pos_conv_kernel", "min_masks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("final_dim", "mask_length", "pos_conv_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.logit_temp <= 0:
            raise ValueError(f"logit_temp must be > 0, got {self.logit_temp}")

    @property
    def dim(self) -> int:
        """Encoder width."""
        return self.encoder.dim

    def architecture(self) -> dict[str, Any]:
        """The fields that decide what the weights mean (not training settings such as dropout or masking, nor
        the prediction head's size, which the weights' shapes already fix)."""
        data = {k: v for k, v in self.to_dict().items() if k not in TRAINING_FIELDS}
        data["encoder"] = {k: v for k, v in data["encoder"].items() if k not in ENCODER_TRAINING_FIELDS}
        return data

    def architecture_differences(self, other: HubertConfig) -> list[str]:
        """Dotted names of the architecture fields in which ``other`` differs from this config."""
        mine, theirs = self.architecture(), other.architecture()
        out = [k for k in mine if k != "encoder" and mine[k] != theirs[k]]
        out += [f"encoder.{k}" for k in mine["encoder"] if mine["encoder"][k] != theirs["encoder"][k]]
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-serialisable dict (the encoder as a nested dict)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["encoder"] = self.encoder.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HubertConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a HubertConfig dict must be a mapping, got {type(data).__name__}")
        values = parse_fields(cls, data, "HubertConfig")
        if "encoder" in values and not isinstance(values["encoder"], EncoderConfig):
            values["encoder"] = EncoderConfig.from_dict(dict(values["encoder"]))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> HubertConfig:
        """Load a config written by :meth:`to_yaml` (or by hand with the same keys)."""
        import yaml

        path = Path(path)
        with open(path) as f:
            data = yaml.safe_load(f)
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)

    def replace(self, **overrides: Any) -> HubertConfig:
        """A copy with ``overrides`` applied (top-level names, ``encoder={...}`` or ``"encoder.<field>"``)."""
        data = self.to_dict()
        encoder = dict(data["encoder"])
        for key, value in overrides.items():
            if key.startswith("encoder."):
                encoder[key.split(".", 1)[1]] = value
            elif key == "encoder":
                if isinstance(value, EncoderConfig):
                    encoder = value.to_dict()
                elif isinstance(value, Mapping):
                    encoder.update(value)
                else:
                    raise ValueError(
                        f"override 'encoder' must be a dict or EncoderConfig, got {type(value).__name__}"
                    )
            else:
                data[key] = value
        data["encoder"] = encoder
        return HubertConfig.from_dict(data)


# ----------------------------------------------------------------------------------------------- presets
# Sparseformer layout. Block 64 (windows of 4 blocks = 256 frames = 5.1 s): at T = 500 / 781 / 1000 frames a
# layer computes 63 / 50 / 44 % of the score matrix (block 128 would be fully dense up to 512 frames), and two
# blocks fill one 128-frame FlexAttention tile (the smallest the compiled kernel accepts), so 25-38 % of whole
# tiles are skipped; with block 32 every tile column holds a summary block and no tile is skipped. One summary
# position per head (num_different_global_patterns = 4 = num_local_blocks // num_global_blocks).
_SPARSE = dict(
    pattern="fixed",
    block=64,
    num_local_blocks=4,
    num_global_blocks=1,
    different_layout_per_head=True,
    num_different_global_patterns=4,
)
# Conformer-S and Squeezeformer-XS share their shape: 16 blocks of width 144, 4 heads, FFN 576, kernel 31.
# Regularisation is HuBERT's for every encoder (EncoderConfig's defaults: dropout 0.1, attention dropout 0.1,
# activation dropout 0, LayerDrop 0.05), as the paper follows HuBERT's recipe; 0.1.0 gave this family the ASR
# recipes' activation dropout 0.1 and no LayerDrop (reachable with model.overrides, see docs/quantization.md).
_SMALL_CONV = dict(num_layers=16, dim=144, num_heads=4, ffn_dim=576, conv_kernel_size=31)
# Tiny variants: 2-3 blocks of width 32, a fastconv front end of width 32 (SEW c=4) and a 16-frame positional
# conv, so a CPU training step takes milliseconds. Sparseformer-tiny uses 4-frame blocks so that short test
# inputs are really sparse; Squeezeformer-tiny halves the frame rate for its middle block.
_TINY_ENCODER = dict(num_layers=2, dim=32, num_heads=2, ffn_dim=64)
_TINY_FRONTEND = dict(conv_dim=32, pos_conv_kernel=16, pos_conv_groups=4)
_TINY_FRONTEND_RELATIVE = dict(_TINY_FRONTEND, pos_conv_kernel=0)  # relative positions: no positional conv
_TINY_SPARSE = dict(_SPARSE, block=4, num_different_global_patterns=2)

# name -> (preset it extends or None for the HubertConfig defaults = HuBERT Base, fields it sets). Encoder fields
# are merged into the base preset's encoder. The paper's five encoders use the FastConv front end.
PRESET_TABLE: dict[str, tuple[str | None, dict[str, Any]]] = {
    "vanilla": (None, {}),
    "conformer_s": (None, dict(encoder=dict(kind="conformer", **_SMALL_CONV), pos_conv_kernel=0)),
    "squeezeformer_xs": (
        None,
        dict(
            encoder=dict(kind="squeezeformer", **_SMALL_CONV, time_reduce_idx=7, time_recover_idx=15),
            pos_conv_kernel=0,
        ),
    ),
    "sparseformer_dn_s": (  # deep-narrow
        None,
        dict(encoder=dict(num_layers=16, dim=256, num_heads=4, ffn_dim=1024, sparsity=_SPARSE)),
    ),
    "sparseformer_sw_s": (  # shallow-wide
        None,
        dict(encoder=dict(num_layers=8, dim=512, num_heads=4, ffn_dim=2048, sparsity=_SPARSE)),
    ),
    "vanilla_tiny": ("vanilla", dict(encoder=_TINY_ENCODER, **_TINY_FRONTEND)),
    "conformer_s_tiny": (
        "conformer_s",
        dict(encoder=dict(_TINY_ENCODER, conv_kernel_size=5), **_TINY_FRONTEND_RELATIVE),
    ),
    "squeezeformer_xs_tiny": (
        "squeezeformer_xs",
        dict(
            encoder=dict(
                _TINY_ENCODER, num_layers=3, conv_kernel_size=5, time_reduce_idx=1, time_recover_idx=2
            ),
            **_TINY_FRONTEND_RELATIVE,
        ),
    ),
    "sparseformer_dn_s_tiny": (
        "sparseformer_dn_s",
        dict(encoder=dict(_TINY_ENCODER, num_layers=4, sparsity=_TINY_SPARSE), **_TINY_FRONTEND),
    ),
    "sparseformer_sw_s_tiny": (
        "sparseformer_sw_s",
        dict(encoder=dict(_TINY_ENCODER, dim=64, ffn_dim=128, sparsity=_TINY_SPARSE), **_TINY_FRONTEND),
    ),
}


def _build_preset(name: str) -> HubertConfig:
    base, fields = PRESET_TABLE[name]
    config = HubertConfig() if base is None else _build_preset(base)
    return config.replace(name=name, **fields)


PRESETS: dict[str, HubertConfig] = {name: _build_preset(name) for name in PRESET_TABLE}


def preset(name: str) -> HubertConfig:
    """A fresh copy of the preset called ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
    return HubertConfig.from_dict(PRESETS[name].to_dict())


def make_config(name: str | HubertConfig, num_classes: int | None = None, **overrides: Any) -> HubertConfig:
    """The config :func:`~hubert_lit.models.build_hubert` builds: a preset (or a copy of ``name``), with
    ``num_classes`` and the ``overrides`` of :meth:`HubertConfig.replace` applied."""
    config = preset(name) if isinstance(name, str) else HubertConfig.from_dict(name.to_dict())
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return config.replace(**overrides) if overrides else config


def write_preset_yamls(folder: str | Path) -> list[Path]:
    """Write every preset to ``<folder>/<name>.yaml`` (how ``configs/model/`` is generated)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cfg in PRESETS.items():
        path = folder / f"{name}.yaml"
        cfg.to_yaml(path)
        paths.append(path)
    return paths
