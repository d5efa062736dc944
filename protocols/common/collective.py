"""Public metadata between MPC parties over torch.distributed, as JSON (never pickle).

CrypTen moves shares; the parties also need a little public metadata before
they can start: the model architecture's name and shapes, the input shape,
the shapes of each data owner's training data. That travels as UTF-8 JSON in
a uint8 tensor, length first, through the same process group. Parties over
TLS links have no process group: their group (a ``TLSGroup``) carries the
same JSON over the links.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from secure_infer.backends.crypten import TLSGroup


def broadcast_json(value: Any, *, src: int, rank: int, group: Any = None) -> Any:
    """``value`` from rank ``src`` to every party (others pass ``None``)."""
    import torch.distributed as dist

    if isinstance(group, TLSGroup):
        return group.broadcast_json(value, src=src)

    if rank == src:
        data = json.dumps(value, allow_nan=False).encode("utf-8")
        length = torch.tensor([len(data)], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(length, src=src, group=group)
    if rank == src:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        payload = torch.empty(int(length.item()), dtype=torch.uint8)
    dist.broadcast(payload, src=src, group=group)
    return value if rank == src else json.loads(bytes(payload.numpy()).decode("utf-8"))


def gather_json(value: Any, *, rank: int, world_size: int, group: Any = None) -> list[Any]:
    """Every party's ``value``, in rank order, at every party."""
    return [broadcast_json(value if r == rank else None, src=r, rank=rank, group=group) for r in range(world_size)]
