"""The workers' torch process group, with its rendezvous store bound to the node's Ray address.

    TorchTrainer(..., torch_config=BoundTorchConfig(backend="gloo"))

Why this exists: Ray Train's `TorchConfig` lets `init_process_group("env://")` create the c10d
TCPStore on rank 0, and torch's store server listens on every interface (`*:PORT`, IPv6 any),
whatever MASTER_ADDR says. On a laptop that is a port open to the network, which breaks the
loopback-only promise. Torch can serve a store on a socket it is given (`master_listen_fd`), so
rank 0 binds one to its node's Ray address (127.0.0.1 on a local cluster, the node's address on
a real one, where the other nodes must reach it), serves the store on it, and every rank joins
the process group through that store. Everything else is Ray's `_TorchBackend` as it is.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

# rank 0's store server: kept alive for the life of the worker process (the group's lifetime)
_served_store: dist.TCPStore | None = None


def serve_store(world_size: int, timeout_s: int) -> tuple[str, int]:
    """Rank 0: a store server listening on this node's Ray address only; (address, port)."""
    global _served_store
    address = ray.util.get_node_ip_address()
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen()
    port = listener.getsockname()[1]
    # torch's server takes the socket over (detach: Python must not close it under it)
    _served_store = dist.TCPStore(address, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                                  wait_for_workers=False, master_listen_fd=listener.detach())
    return address, port


def join_process_group(backend: str, world_rank: int, world_size: int, address: str, port: int, timeout_s: int) -> None:
    """Every rank: the default process group through rank 0's store."""
    # read by Lightning's cluster environment and DeepSpeed, which reuse the group made here
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    timeout = timedelta(seconds=timeout_s)
    store = _served_store if world_rank == 0 else dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class BoundTorchBackend(_TorchBackend):
    """Ray's torch backend with the rendezvous of `serve_store` / `join_process_group`."""

    def on_start(self, worker_group, backend_config: BoundTorchConfig) -> None:
        n_workers = len(worker_group)
        address, port = worker_group.execute_single(0, serve_store, world_size=n_workers,
                                                    timeout_s=backend_config.timeout_s)
        worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK, WORLD_SIZE, ... as Ray sets them
        ray.get([
            worker_group.execute_single_async(rank, join_process_group, backend=backend_config.backend, world_rank=rank,
                                              world_size=n_workers, address=address, port=port,
                                              timeout_s=backend_config.timeout_s)
            for rank in range(n_workers)
        ])


@dataclass
class BoundTorchConfig(TorchConfig):
    """`TorchConfig` (give `backend` explicitly: gloo or nccl) whose store listens on one address."""

    @property
    def backend_cls(self):
        return BoundTorchBackend
