"""Process-group set-up from torchrun's variables, and the small collectives the loop needs."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from image_classifier import params
from image_classifier.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1  # processes on this host (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(use_cuda: bool) -> World:
    """Join the group torchrun set up (``RANK``/``WORLD_SIZE``), or a world of one without torchrun."""
    if "RANK" not in os.environ:
        return World()
    world = World(
        int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    )
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    # explicit, so a rank that dies or hangs (in the pre-flight's exchange of verdicts, say) fails the others
    # with a reason after this long instead of torch's backend-dependent default
    timeout = timedelta(seconds=float(os.environ.get(params.PROCESS_GROUP_TIMEOUT_ENV, params.DEFAULT_PROCESS_GROUP_TIMEOUT_SECONDS)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    return world


def all_reduce_sum(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(value: float, world: World, device: torch.device) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def gather_lists(values: list, world: World) -> list:
    if not world.distributed:
        return values
    parts: list = [None] * world.size
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    return bool(all_reduce_sum([1.0 if flag else 0.0], world, device)[0] > 0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_hosts(hosts: Sequence[str], timeout: float, poll: float = 1.0) -> None:
    """Multi-host jobs need every peer's name to resolve before torchrun can rendezvous."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending:
        still = []
        for host in pending:
            try:
                socket.gethostbyname(host)
            except OSError:
                still.append(host)
        pending = still
        if pending and time.monotonic() > deadline:
            raise UserError(f"hosts {pending} did not resolve within {timeout:.0f}s; cannot start multi-host training")
        if pending:
            time.sleep(poll)
