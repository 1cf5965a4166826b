"""Distributed start-up, in one place: which rank this process is and how the ranks' process group forms.

Two ways to get tensor-parallel ranks:
- spawned: `LLM(model=dir)` in a plain process is rank 0 and starts the other ranks itself, on this host, with a
  process group on a free loopback port (tp_executor.py, worker_process.py);
- env://: a launcher (torchrun, or anything that sets torch.distributed's RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT, LOCAL_RANK) started one process per rank, possibly on several hosts; each joins the group the
  launcher describes (rank_launch.py).
gloo on CPU, NCCL on CUDA, either way. BUCKETSERVE_TP_TIMEOUT_S (default 60) bounds every wait on another rank:
a collective, a connection, a vanished host.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "BUCKETSERVE_TP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
ENV_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def rank_timeout() -> timedelta:
    """How long a rank waits on another before calling it gone: BUCKETSERVE_TP_TIMEOUT_S, default 60."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to e.g. 60, or unset it")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class RankPlacement:
    """Where this process sits among the ranks: its rank, how many there are, and its place on its host."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_env(cls) -> RankPlacement | None:
        """The placement a launcher gave this process (torchrun's env:// variables), or None without one."""
        if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
            return None
        missing = [name for name in ENV_VARIABLES if not os.environ.get(name)]
        if missing:
            raise ValueError(f"torch.distributed's env:// variables are set only in part ({', '.join(missing)} missing); "
                             f"launch with torchrun, which sets them all, or set {', '.join(ENV_VARIABLES)} (and LOCAL_RANK)")
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size} (ranks are 0 to WORLD_SIZE - 1)")
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank, world_size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def free_port() -> int:
    """A port free now on loopback, so several tensor-parallel models can live on one machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: str, local_rank: int) -> torch.device:
    """A rank's device: the GPU of its place on its host (LOCAL_RANK), or the CPU."""
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")


def ensure_no_process_group() -> None:
    """One process group per process: a second tensor-parallel model must not start while one lives."""
    if dist.is_initialized():
        raise RuntimeError(
            "a torch.distributed process group already exists in this process (another tensor-parallel model is "
            "alive?); close it first (LLM.close() / model.close()), or run the second one in another process"
        )


def init_process_group(rank: int, world_size: int, port: int, device: str) -> None:
    """Spawned ranks: all on this host, meeting on a loopback port that rank 0 chose."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    _init(RankPlacement(rank, world_size, rank, world_size), device, f"tcp://127.0.0.1:{port}")


def init_process_group_from_env(placement: RankPlacement, device: str) -> None:
    """Launched ranks: join the group MASTER_ADDR:MASTER_PORT describes. Across hosts gloo and NCCL pick the
    interface this host's name resolves to; GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME choose another."""
    _init(placement, device, "env://")


def _init(placement: RankPlacement, device: str, init_method: str) -> None:
    ensure_no_process_group()
    if device == "cuda":
        torch.cuda.set_device(placement.local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # The ranks on this host share its cores: without this each would start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // placement.local_world_size))
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        init_method=init_method,
        rank=placement.rank,
        world_size=placement.world_size,
        timeout=rank_timeout(),
    )


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def die_with_launcher() -> None:
    """Under torchrun, end this rank when its agent dies (SIGKILL, a lost host): torchrun starts each rank in a
    session of its own, so a killed agent would otherwise leave it running, holding its peers in a collective."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not hasattr(signal, "SIGKILL"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the peers' timeout still ends the run
        return
    if os.getppid() == 1:  # the agent died before the request took hold
        os.kill(os.getpid(), signal.SIGKILL)
