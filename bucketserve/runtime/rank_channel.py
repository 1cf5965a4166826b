"""The control channel of launched ranks: one TCP connection from every other rank to rank 0, carrying
rank 0's calls ("decode these N") in the same (method, args) messages spawned workers get over a socket pair.

Why not the process group: a rank that follows may wait hours for the next call (a server with no traffic),
longer than any collective timeout, yet must still notice within the timeout when rank 0's host disappears.
TCP keepalive does that here, with no thread; the collectives inside the graphs keep their own timeout.

Set-up: rank 0 listens on the address its peers reach it at (BUCKETSERVE_RANK0_HOST, else the local address
of its route to MASTER_ADDR) and sends that address and a random token over the process group; each rank
connects and sends the token and its rank before anything else, so a stray connection never gets to send a
pickle.
"""
from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from datetime import timedelta
from multiprocessing.connection import Connection

import torch.distributed as dist

from .executor import TensorParallelError

HOST_ENV = "BUCKETSERVE_RANK0_HOST"
TOKEN_BYTES = 32
HELLO = struct.Struct(f"!{TOKEN_BYTES}sI")  # token, rank


class ChannelError(TensorParallelError):
    """The control channel could not be set up; the message names the address and the rank."""


def listen_as_rank0(world_size: int, timeout: timedelta) -> dict[int, Connection]:
    """Rank 0: accept one connection from every other rank; returns them by rank."""
    host = os.environ.get(HOST_ENV) or _address_towards(os.environ.get("MASTER_ADDR", "127.0.0.1"))
    token = secrets.token_bytes(TOKEN_BYTES)
    listener = socket.create_server((host, 0), backlog=world_size)
    port = listener.getsockname()[1]
    dist.broadcast_object_list([(host, port, token)], src=0)
    peers: dict[int, Connection] = {}
    deadline = time.monotonic() + timeout.total_seconds()
    try:
        while len(peers) < world_size - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted(set(range(1, world_size)) - set(peers))
                raise ChannelError(f"ranks {waiting} did not connect to rank 0 at {host}:{port} within "
                                   f"{timeout.total_seconds():.0f} s; check that their hosts reach it (set {HOST_ENV} "
                                   "to an address they can reach)")
            listener.settimeout(left)
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            rank = _read_hello(sock, token, world_size, timeout)
            if rank is None or rank in peers:  # not one of ours: drop it, keep waiting
                sock.close()
                continue
            peers[rank] = _as_connection(sock, timeout)
    except BaseException:
        for conn in peers.values():
            conn.close()
        raise
    finally:
        listener.close()
    return peers


def connect_to_rank0(rank: int, timeout: timedelta) -> Connection:
    """Every other rank: connect to the address rank 0 sent over the process group."""
    received = [None]
    dist.broadcast_object_list(received, src=0)
    host, port, token = received[0]
    try:
        sock = socket.create_connection((host, port), timeout=timeout.total_seconds())
        sock.sendall(HELLO.pack(token, rank))
    except OSError as err:
        raise ChannelError(f"rank {rank} could not connect to rank 0 at {host}:{port} ({err}); set {HOST_ENV} on "
                           "rank 0's host to an address this host reaches") from err
    return _as_connection(sock, timeout)


def _read_hello(sock: socket.socket, token: bytes, world_size: int, timeout: timedelta) -> int | None:
    sock.settimeout(timeout.total_seconds())
    data = b""
    try:
        while len(data) < HELLO.size:
            chunk = sock.recv(HELLO.size - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    given, rank = HELLO.unpack(data)
    return rank if secrets.compare_digest(given, token) and 0 < rank < world_size else None


def _as_connection(sock: socket.socket, timeout: timedelta) -> Connection:
    """A blocking message connection whose peer counts as gone when its host stops answering for `timeout`."""
    seconds = max(1, int(timeout.total_seconds()))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small message per step: send it now
    for option, value in (("TCP_KEEPIDLE", max(1, seconds // 3)), ("TCP_KEEPINTVL", max(1, seconds // 6)),
                          ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", seconds * 1000)):
        if hasattr(socket, option):  # Linux has them all; elsewhere the collectives' timeout still applies
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    sock.settimeout(None)
    return Connection(sock.detach())


def _address_towards(master_addr: str) -> str:
    """This host's address on its route to MASTER_ADDR: the one the other ranks, which reach MASTER_ADDR, can
    most likely reach. Connecting a UDP socket sends nothing; it only picks the route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master_addr, 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())
