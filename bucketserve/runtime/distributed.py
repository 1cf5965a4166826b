"""Process-group set-up for tensor parallelism: gloo on CPU, NCCL on CUDA, on a free loopback port."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

# A collective that waits this long means a rank is gone; fail instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def free_port() -> int:
    """A port free now on loopback, so several tensor-parallel models can live on one machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")


def ensure_no_process_group() -> None:
    """One process group per process: a second tensor-parallel model must not start while one lives."""
    if dist.is_initialized():
        raise RuntimeError(
            "a torch.distributed process group already exists in this process (another tensor-parallel model is "
            "alive?); close it first (LLM.close() / model.close()), or run the second one in another process"
        )


def init_process_group(rank: int, world_size: int, port: int, device: str) -> None:
    ensure_no_process_group()
    if device == "cuda":
        torch.cuda.set_device(rank)
    else:
        # The ranks share this machine's cores: without this each would start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
