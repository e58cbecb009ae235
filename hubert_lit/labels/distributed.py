"""The few collectives the labelling tool needs, as no-ops when it runs as a single process.

Launched by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or as the tasks
of a SLURM job step (``srun``: ``SLURM_STEP_NUM_TASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``; the first host of
``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` is the master, on a port derived from ``SLURM_JOB_ID`` unless
``MASTER_PORT`` is set), more than one process starts a process group: NCCL when the features are computed on a
GPU, gloo otherwise.

A rank that fails must not leave the others waiting for it until the timeout: every phase ends with
:meth:`DistContext.agree`, where each rank says whether its part went well, so every rank stops together with the
failing rank's message.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Port of a SLURM job's process group when MASTER_PORT is not set: one per job, away from Lightning's 15000-19999
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000


class RankFailure(RuntimeError):
    """Another rank (or this one) failed in a phase that every rank takes part in; the message names the rank,
    ``kinds`` the exception classes' names."""

    def __init__(self, message: str, kinds: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.kinds = kinds


def _env_int(env: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            try:
                return int(value)
            except ValueError as err:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from err
    return default


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``gpu[003-004,007],cpu1`` -> ``gpu003``; ``node7`` -> ``node7``;
    ``rack[1-2]-n[05-06]`` -> ``rack1-n05``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level item: commas inside brackets do not split
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    item = nodelist[:end].strip()
    if not item or item.count("[") != item.count("]"):
        raise ValueError(f"cannot read a host list from {nodelist!r}")
    # each bracket group's first entry (ranges keep their zero padding: [003-004] starts at 003)
    return re.sub(r"\[([^\],\-]+)[^\]]*\]", r"\1", item)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a multi-process launch."""

    world_size: int
    rank: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" or "slurm"


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by torchrun's variables, else by a SLURM job step's; None for a single process.
    ``ValueError`` naming the variable when they are incomplete or inconsistent."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE"):
        world = _env_int(env, "WORLD_SIZE", default=1)
        if world <= 1:
            return None
        rank = _env_int(env, "RANK", default=-1)
        if not 0 <= rank < world:
            raise ValueError(f"WORLD_SIZE={world} but RANK is missing or out of range: {rank}")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(
                    f"WORLD_SIZE={world} but {name} is not set (launch with torchrun or export it)"
                )
        return Launch(
            world,
            rank,
            _env_int(env, "LOCAL_RANK", default=0),
            env["MASTER_ADDR"],
            _env_int(env, "MASTER_PORT", default=0),
            "torchrun",
        )
    # srun sets SLURM_STEP_NUM_TASKS for the tasks of its step; a batch script run without srun has none, and
    # SLURM_NTASKS alone would make a lone process wait for tasks that were never started
    world = _env_int(env, "SLURM_STEP_NUM_TASKS", default=1)
    if world <= 1:
        return None
    rank = _env_int(env, "SLURM_PROCID", default=-1)
    if not 0 <= rank < world:
        raise ValueError(f"SLURM_STEP_NUM_TASKS={world} but SLURM_PROCID is missing or out of range: {rank}")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "")
    if not addr:
        raise ValueError(
            "a SLURM step of several tasks but no SLURM_JOB_NODELIST or MASTER_ADDR to find rank 0 by"
        )
    if env.get("MASTER_PORT"):
        port = _env_int(env, "MASTER_PORT", default=0)
    else:
        job = _env_int(env, "SLURM_JOB_ID", default=-1)
        if job < 0:
            raise ValueError("a SLURM step of several tasks but neither MASTER_PORT nor SLURM_JOB_ID is set")
        port = SLURM_PORT_BASE + job % SLURM_PORT_SPAN
    return Launch(world, rank, _env_int(env, "SLURM_LOCALID", default=0), addr, port, "slurm")


@dataclass
class DistContext:
    """Rank, world size and local rank of this process; collectives on picklable objects."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @classmethod
    def from_env(cls, use_cuda: bool, timeout_minutes: float) -> DistContext:
        """Join the process group of a torchrun or SLURM launch (:func:`launch_from_env`); otherwise a
        single-process context."""
        launch = launch_from_env()
        if launch is None:
            return cls()
        if use_cuda:
            torch.cuda.set_device(launch.local_rank)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        return cls(launch.rank, launch.world_size, launch.local_rank, initialized=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, error: BaseException | None) -> None:
        """Every rank says whether its part of a phase failed; if any did, every rank raises
        :class:`RankFailure` with the failures (this rank's own error chained)."""
        if not self.initialized:
            if error is not None:
                raise error
            return
        mine = None if error is None else (type(error).__name__, f"rank {self.rank}: {error}")
        everyone: list[tuple[str, str] | None] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        failures = [m for m in everyone if m is not None]
        if failures:
            kinds = frozenset(kind for kind, _ in failures)
            raise RankFailure("; ".join(text for _, text in failures), kinds) from error

    def run(self, part: Callable[[], T]) -> T:
        """``part()`` on this rank, then :meth:`agree` on whether it raised: a failure on any rank stops all of
        them here, instead of leaving the others blocked in the next collective."""
        try:
            result = part()
        except Exception as err:  # reported to every rank, then raised on each
            self.agree(err)
            raise  # single process: agree() already raised
        self.agree(None)
        return result

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
