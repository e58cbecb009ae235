"""QuantSpec: what :func:`hubert_lit.quant.binarize` quantizes, and with how many bits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from hubert_lit.config_dicts import parse_fields
from hubert_lit.quant.binarizers import SUPPORTED_ACTIVATION_BITS, SUPPORTED_WEIGHT_BITS

# Module names (fnmatch patterns) kept in full precision by default: the conv front end and the feature
# projection, the conv positional embedding and the prediction head's projection. Norms, biases, the mask
# embedding and the label embeddings are never quantized (only nn.Linear / nn.Conv1d layers and attention hooks are
# candidates), so they need no pattern.
DEFAULT_FULL_PRECISION = ("feature_extractor", "feature_projection", "pos_conv", "final_proj")
FULL_PRECISION_ACTIVATIONS = 32
CONV_SCALES = ("tensor", "channel")

# What a stored spec (a checkpoint's or a packed export's) that lacks one of these keys was trained with: specs
# written by hubert-lit 0.1.0 predate the switches, so a missing key means the old behaviour, and their files
# load and resume unchanged. New specs always store every key.
LEGACY_DEFAULTS = {
    "pointwise_conv_scale": "channel",
    "binarize_relative_positions": True,
    "dropout_before_prob_binarizer": False,
    "unsigned_min_offset": False,
}


@dataclass
class QuantSpec:
    """Bit widths and full-precision exceptions of a quantized (BiT) model. ``QuantSpec()`` is BiT's W1A1.

    Attributes:
        weight_bits: bits of every quantized weight (1 = BiT's scaled sign; 2-4 = uniform, no zero level).
        activation_bits: bits of every quantized activation (layer inputs and attention operands);
            32 keeps activations in full precision (weight-only quantization).
        full_precision: fnmatch patterns of module names left in full precision; a module is kept when its own
            name or the name of any module containing it matches (``"pos_conv"`` keeps ``pos_conv.conv``).
        quantize_attention: quantize queries, keys, values and the relative-position projection (signed) and the
            attention probabilities (unsigned), so both attention matmuls are binary x binary.
        ffn_relu: replace the feed-forward inner activation (GELU/Swish) by ReLU and quantize the second Linear's
            input with the unsigned set ``{0, a}``, as BiT does; otherwise keep the activation and use ``{-a, a}``.
        binarize_depthwise: quantize depthwise convolutions too (few MACs, so little to gain; kept as a switch).
            Their weights keep one scale per output channel: a depthwise kernel has 31 taps per channel and no
            Linear counterpart.
        pointwise_conv_scale: weight statistics (mean and scale) of pointwise (kernel 1) convolutions: ``"tensor"``
            (default) quantizes them exactly as Linear layers, which they are in all but name; ``"channel"`` (0.1.0)
            gives them one scale and mean per output channel, a finer quantizer than the Linears of every family.
        binarize_relative_positions: quantize the relative-position projection (``linear_pos``) and its attention
            operand (``pos_hook``) of Conformer/Squeezeformer. Default False: positional modules stay full
            precision in every family, as the Transformer family's convolutional positional embedding does
            (0.1.0 binarized the relative ones).
        dropout_before_prob_binarizer: apply attention dropout before the probability binarizer, as BiT does
            (0.1.0: after it).
        unsigned_min_offset: multi-bit unsigned sites subtract the batch minimum before quantizing and add it
            back after (BiT's multi-bit unsigned quantizer); no effect at one bit (0.1.0: no offset).
    """

    weight_bits: int = 1
    activation_bits: int = 1
    full_precision: tuple[str, ...] = DEFAULT_FULL_PRECISION
    quantize_attention: bool = True
    ffn_relu: bool = True
    binarize_depthwise: bool = True
    pointwise_conv_scale: str = "tensor"
    binarize_relative_positions: bool = False
    dropout_before_prob_binarizer: bool = True
    unsigned_min_offset: bool = True

    def __post_init__(self) -> None:
        if self.weight_bits not in SUPPORTED_WEIGHT_BITS:
            raise ValueError(
                f"QuantSpec.weight_bits must be one of {SUPPORTED_WEIGHT_BITS}, got {self.weight_bits!r}"
            )
        allowed = (*SUPPORTED_ACTIVATION_BITS, FULL_PRECISION_ACTIVATIONS)
        if self.activation_bits not in allowed:
            raise ValueError(
                f"QuantSpec.activation_bits must be one of {allowed}, got {self.activation_bits!r}"
            )
        if self.pointwise_conv_scale not in CONV_SCALES:
            raise ValueError(
                f"QuantSpec.pointwise_conv_scale must be one of {CONV_SCALES}, got {self.pointwise_conv_scale!r}"
            )
        if isinstance(self.full_precision, str):
            raise ValueError("QuantSpec.full_precision must be a list of patterns, not a single string")
        self.full_precision = tuple(str(p) for p in self.full_precision)

    @property
    def name(self) -> str:
        """Short tag such as ``W1A1`` or ``W1A2``."""
        return f"W{self.weight_bits}A{self.activation_bits}"

    def keeps_full_precision(self, module_name: str) -> bool:
        """True when ``module_name`` or any enclosing module name matches a ``full_precision`` pattern."""
        parts = module_name.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatchcase(p, pattern) for p in prefixes for pattern in self.full_precision)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML/torch.save friendly)."""
        out = asdict(self)
        out["full_precision"] = list(self.full_precision)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Inverse of :meth:`to_dict` for a stored spec: unknown keys are an error, a missing switch means its
        :data:`LEGACY_DEFAULTS` value (the behaviour the spec was written with)."""
        if not isinstance(data, dict):
            raise ValueError(f"quant spec must be a mapping, got {type(data).__name__}")
        return cls(**{**LEGACY_DEFAULTS, **parse_fields(cls, data, "quant spec")})
