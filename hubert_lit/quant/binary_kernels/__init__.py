"""Real 1-bit kernels: bit packing and XNOR/AND-popcount GEMMs (C++ extension, pure-PyTorch fallback).

Typical use for a BiT W1A1 Linear (signed input, one weight scale):

    w = pack_weight(codes)                                    # once, at load: codes from quantize_weight_codes
    x_bits = pack_signed(x, shift)                            # once per layer input
    y = xnor_gemm(x_bits, w, column_scale(a, step / 2, n), bias)

See :mod:`hubert_lit.quant.binary_kernels.ops` for the formulas and :mod:`.extension` for the build cache, the ISA
dispatch and how to force the fallback.
"""

from hubert_lit.quant.binary_kernels.extension import (
    active_isa,
    kernels_available,
    set_isa,
    supported_isas,
)
from hubert_lit.quant.binary_kernels.ops import (
    and_bmm,
    and_gemm,
    column_scale,
    kernels_in_use,
    pack_signed,
    pack_signed_columns,
    pack_signed_panels,
    pack_softmax,
    pack_unsigned,
    pack_weight,
    unpack,
    use_fallback,
    xnor_bmm,
    xnor_gemm,
)
from hubert_lit.quant.binary_kernels.packed import BitPanels, BitRows

__all__ = [
    "BitPanels",
    "BitRows",
    "active_isa",
    "and_bmm",
    "and_gemm",
    "column_scale",
    "kernels_available",
    "kernels_in_use",
    "pack_signed",
    "pack_signed_columns",
    "pack_signed_panels",
    "pack_softmax",
    "pack_unsigned",
    "pack_weight",
    "set_isa",
    "supported_isas",
    "unpack",
    "use_fallback",
    "xnor_bmm",
    "xnor_gemm",
]
