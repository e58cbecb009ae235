"""Bit packing of quantized weight codes: the ``bits`` bits of each code (least significant first) in a row, packed
8 to a byte by ``np.packbits``."""

from __future__ import annotations

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into bytes: ``bits`` bits per code, 8 bits per byte."""
    flat = codes.detach().cpu().numpy().astype(np.uint8).reshape(-1)
    if bits == 1:
        planes = flat
    else:
        planes = ((flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(-1)
    return torch.from_numpy(np.packbits(planes))


def unpack_codes(data: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    count = int(np.prod(shape))
    planes = np.unpackbits(data.cpu().numpy(), count=count * bits)
    if bits == 1:
        codes = planes
    else:
        codes = (planes.reshape(count, bits).astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(
            axis=1, dtype=np.uint8
        )
    return torch.from_numpy(codes.astype(np.uint8)).reshape(shape)
