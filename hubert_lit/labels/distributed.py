"""The few collectives the labelling tool needs, as no-ops when it runs as a single process.

Launched by ``torchrun`` (or under SLURM with ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` exported, or
``SLURM_PROCID``/``SLURM_LOCALID`` standing in for ``RANK``/``LOCAL_RANK``), ``WORLD_SIZE > 1`` starts a process
group: NCCL when the features are computed on a GPU, gloo otherwise.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value != "":
            try:
                return int(value)
            except ValueError as err:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from err
    return default


@dataclass
class DistContext:
    """Rank, world size and local rank of this process; collectives on picklable objects."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @classmethod
    def from_env(cls, use_cuda: bool, timeout_minutes: float) -> DistContext:
        """Join the process group when ``WORLD_SIZE > 1``; otherwise a single-process context."""
        world = _env_int("WORLD_SIZE", default=1)
        if world <= 1:
            return cls()
        rank = _env_int("RANK", "SLURM_PROCID", default=-1)
        local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
        if not 0 <= rank < world:
            raise ValueError(
                f"WORLD_SIZE={world} but RANK (or SLURM_PROCID) is missing or out of range: {rank}"
            )
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ValueError(
                    f"WORLD_SIZE={world} but {name} is not set (launch with torchrun or export it)"
                )
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        return cls(rank=rank, world_size=world, local_rank=local_rank, initialized=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any] | None:
        """Objects of all ranks, in rank order, on rank 0 (``None`` elsewhere)."""
        if not self.initialized:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.initialized:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def close(self) -> None:
        if self.initialized:
            dist.destroy_process_group()
            self.initialized = False
