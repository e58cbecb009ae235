"""Fixed, seeded binary-kernel computations, run in the test process or as a script in a fresh one
(tests/test_binary_kernels.py): ``python tests/_binary_kernel_probe.py OUT.pt`` saves the outputs and prints the
path taken, whether it compiled, and the RuntimeWarnings raised, as JSON."""

from __future__ import annotations

import json
import sys
import warnings

import torch

from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.binary_kernels import extension


def outputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 100, generator=gen)
    w = bk.pack_weight((torch.rand(21, 100, generator=gen) > 0.5).to(torch.uint8))
    scale, bias = torch.rand(21, generator=gen), torch.randn(21, generator=gen)
    return {
        "xnor": bk.xnor_gemm(bk.pack_signed(x), w, scale, bias),
        "and": bk.and_gemm(bk.pack_unsigned(x.relu(), 0.4), w, None),
        "dots": bk.xnor_gemm(bk.pack_signed(x), w, None),
        "softmax": bk.pack_softmax(x[None] * 4, 0.05, x[None] > -1.0).words,
    }


def main(path: str) -> None:
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        results = outputs()
        outputs()  # a second round must not warn again
    torch.save(results, path)
    state = extension.load()
    report = {
        "isa": bk.active_isa(),
        "compiled": state.compiled,
        "reason": state.reason,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
