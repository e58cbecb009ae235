"""The binary runtime: run a binarized (W1A1) model on real 1-bit kernels, for inference.

``to_binary_runtime(model)`` swaps the binarized layers and attention of a model built by
:func:`hubert_lit.quant.binarize` (or loaded from a checkpoint or packed export) for modules that keep the weights
bit-packed and run XNOR/AND-popcount GEMMs (:mod:`hubert_lit.quant.binary_kernels`);
``hubert_lit.load_model(path, runtime="binary")`` loads a file straight into it.
"""

from hubert_lit.quant.runtime.attention import PackedAttention
from hubert_lit.quant.runtime.convert import RUNTIMES, is_binary_runtime, kernels_ready, to_binary_runtime
from hubert_lit.quant.runtime.layers import InferenceOnly, PackedLinear, PackedPointwiseConv1d

__all__ = [
    "RUNTIMES",
    "InferenceOnly",
    "PackedAttention",
    "PackedLinear",
    "PackedPointwiseConv1d",
    "is_binary_runtime",
    "kernels_ready",
    "to_binary_runtime",
]
