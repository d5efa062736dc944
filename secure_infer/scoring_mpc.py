"""Score a data set with CrypTen parties placed on the hosts that own them, through Ray placement groups.

In MPC the trust boundary is a host: party 0 (the model owner) must compute
on the model owner's machine, party 1 (the data owner) on the data owner's,
for every block. Each host says which party it runs by a Ray resource,
``secure_infer_party_<rank>`` (``ray start --resources
'{"secure_infer_party_0": 8}'``); a placement group per lane holds one bundle
per party, bundle i on a node with party i's resource, so Ray cannot put a
party anywhere else. The parties of one block meet over torch.distributed at
party 0's host, evaluate the block on shares, and only the data owner's party
receives the output. Finished blocks go to a resumable folder, as in
:func:`secure_infer.scoring.score`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer._errors import EngineError, ParameterError
from secure_infer._wrap import EncryptedModel
from secure_infer.engine import RETRIES, connect, split
from secure_infer.scoring import BlockStore, ScoreResult, fingerprint

PARTY_RESOURCE = "secure_infer_party_{}"


def party_resources(parties: int, amount: float = 64) -> dict[str, float]:
    """The resources a single host offers when it runs every party (a local Ray, a demo)."""
    return {PARTY_RESOURCE.format(rank): amount for rank in range(parties)}


@dataclass(frozen=True)
class _PartyJob:
    """What one party's task receives: the weights only at the model owner, the inputs only at the data owner."""

    rank: int
    parties: int
    master_addr: str
    master_port: int
    x: torch.Tensor | None
    x_shape: tuple[int, ...]
    timeout: float
    precision_bits: int = 16


def _free_port() -> tuple[str, int]:
    import socket

    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket() as sock:
        sock.bind((host, 0))
        return host, int(sock.getsockname()[1])


def interface_of(ip: str) -> str | None:
    """The network interface holding address ``ip`` (Linux), or None.

    gloo picks its interface from the hostname, which often resolves to
    127.0.x.1: a party that listened there could not be reached from another
    host. Each party uses the interface of the address Ray reaches it at.
    """
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
    return None


def _party(job: _PartyJob, graph: Any) -> dict[str, Any]:
    """One party of one block, in a fresh Ray worker process (CrypTen's state is per process).

    ``graph`` carries the weights at the model owner and zeros elsewhere (a top-level
    argument, so Ray fetches it from the object store on this party's node).
    """
    import ray

    from secure_infer.backends.crypten import (
        DATA_OWNER,
        MODEL_OWNER,
        PartyProgram,
        PartySettings,
        run_crypten_party,
    )

    torch.set_num_threads(1)
    device = interface_of(ray.util.get_node_ip_address())
    if device is not None and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = device
    settings = PartySettings(rank=job.rank, world_size=job.parties, master_addr=job.master_addr,
                             master_port=job.master_port, timeout=job.timeout, precision_bits=job.precision_bits)

    def work(session: Any) -> dict[str, Any]:
        crypten = session.crypten
        program = PartyProgram(graph, crypten, model_owner=MODEL_OWNER)
        x = job.x if job.rank == DATA_OWNER else torch.empty(job.x_shape)
        y_enc, _ = program(crypten.cryptensor(x, src=DATA_OWNER))
        y = y_enc.get_plain_text(dst=DATA_OWNER)
        stats = session.stats()
        return {"outputs": y.numpy() if job.rank == DATA_OWNER else None, "bytes": int(stats.get("bytes", 0)),
                "rounds": int(stats.get("rounds", 0))}

    out = run_crypten_party(settings, work, phase="inference", on_phase=lambda _phase: None) or {}
    context = ray.get_runtime_context()
    out.update(rank=job.rank, node=context.get_node_id(), resources=context.get_assigned_resources())
    return out


@dataclass
class MPCBlock:
    """Where each party of one block ran (node ids by rank) and what it cost."""

    index: int
    nodes: dict[int, str]
    resources: dict[int, list[str]]  # by rank: the Ray resources its task held (its bundle's party label)
    seconds: float
    bytes: int
    rounds: int
    attempts: int


def score_mpc(enc: EncryptedModel, x: torch.Tensor, *, address: str = "local", block: int = 64, lanes: int = 1,
              out: str | Path | None = None, fresh: bool = False, timeout: float = 120.0,
              on_block: Callable[[int, int], None] | None = None) -> tuple[ScoreResult, list[MPCBlock]]:
    """Evaluate ``x`` on CrypTen shares, ``block`` inputs at a time, each party on its own host.

    ``enc`` is a model wrapped with ``backend="crypten"`` (its parties count
    and its converted graph are used; its own local parties are not).
    ``lanes`` blocks run at once, each with its own placement group. Returns
    the outputs (at the data owner, this process) and, per block, the node
    each party ran on, so a caller can check the placement.
    """
    from secure_infer.backends.crypten import DATA_OWNER, weightless

    if enc.backend != "crypten":
        raise ParameterError("score_mpc() runs CrypTen models: wrap with backend='crypten'")
    if len(x) == 0:
        raise ParameterError("x holds no inputs")
    parties = int(getattr(enc.program, "parties", 2))
    ray = connect(address, cpus=max(os.cpu_count() or 1, parties * lanes),
                  resources=party_resources(parties) if address == "local" else None)
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    offered = ray.cluster_resources()
    missing = [PARTY_RESOURCE.format(r) for r in range(parties) if offered.get(PARTY_RESOURCE.format(r), 0) <= 0]
    if missing:
        raise EngineError(f"no node of the cluster runs {', '.join(missing)}: start each party's host with "
                          f"`ray start ... --resources '{{\"{missing[0]}\": 8}}'`")
    blocks = split(len(x), block)
    store = BlockStore(out, fingerprint(enc, x, block), blocks, fresh=fresh)
    pending = store.pending()
    result = ScoreResult(torch.empty(0), 0.0, 0, len(blocks), len(blocks) - len(pending), traffic="share")
    graph = getattr(enc.program, "graph", enc.graph)  # what the backend compiled (conversions applied)
    precision = int(getattr(enc.program, "precision_bits", 16))
    graphs = {rank: graph if rank == 0 else weightless(graph) for rank in range(parties)}
    graph_refs = {rank: ray.put(g) for rank, g in graphs.items()}
    groups = [placement_group([{"CPU": 1, PARTY_RESOURCE.format(r): 1} for r in range(parties)], strategy="SPREAD")
              for _ in range(lanes)]
    placements: list[MPCBlock] = []
    nodes: Counter[str] = Counter()
    started = time.perf_counter()
    party = ray.remote(num_cpus=1, max_calls=1, max_retries=0)(_party)
    port_of = ray.remote(num_cpus=0)(_free_port)
    try:
        if not all(ray.get([g.ready() for g in groups], timeout=timeout)):
            raise EngineError("the parties' placement groups were not placed")
        queue = [(index, rows, 1) for index, rows in pending]
        running: dict[Any, tuple[int, range, int, int, float, list[Any]]] = {}
        free = list(range(lanes))
        while queue or running:
            while queue and free:
                index, rows, attempts = queue.pop(0)
                lane = free.pop(0)
                strategy = [PlacementGroupSchedulingStrategy(groups[lane], placement_group_bundle_index=r)
                            for r in range(parties)]
                host, port = ray.get(port_of.options(scheduling_strategy=strategy[0]).remote())
                xb = x[rows.start : rows.stop]
                # each party also asks for its own label, so Ray's record of the task shows where it was placed
                refs = [party.options(scheduling_strategy=strategy[r],
                                      resources={PARTY_RESOURCE.format(r): 1}).remote(
                    _PartyJob(r, parties, host, port, xb if r == DATA_OWNER else None, tuple(xb.shape), timeout,
                              precision), graph_refs[r])
                    for r in range(parties)]
                running[refs[DATA_OWNER]] = (index, rows, attempts, lane, time.perf_counter(), refs)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
            if not ready:  # no block finished in time: a party stuck at the rendezvous or on a dead peer
                stuck = next(iter(running))
                index, rows, attempts, lane, began, refs = running.pop(stuck)
                free.append(lane)
                for ref in refs:
                    ray.cancel(ref, force=True)
                if attempts > RETRIES:
                    raise EngineError(f"MPC block {index} did not finish within {timeout:.0f} s, {attempts} times: "
                                      "check that each party's host reaches the others (firewall, interfaces)")
                queue.append((index, rows, attempts + 1))
                continue
            index, rows, attempts, lane, began, refs = running.pop(ready[0])
            free.append(lane)
            try:
                outs = ray.get(refs)
            except (ray.exceptions.RayError, Exception) as exc:
                for ref in refs:
                    ray.cancel(ref, force=True)
                if attempts > RETRIES:
                    raise EngineError(f"MPC block {index} failed {attempts} times; last: {exc}") from None
                queue.append((index, rows, attempts + 1))
                continue
            y = outs[DATA_OWNER]["outputs"]
            placed = MPCBlock(index, {o["rank"]: o["node"] for o in outs},
                              {o["rank"]: sorted(o["resources"]) for o in outs}, time.perf_counter() - began,
                              sum(o["bytes"] for o in outs), max(o["rounds"] for o in outs), attempts)
            placements.append(placed)
            for node in placed.nodes.values():
                nodes[node] += 1
            store.save(index, y)
            result.inputs += len(rows)
            result.retried += attempts > 1
            result.bytes_in += placed.bytes
            if on_block is not None:
                on_block(len(rows), 1)
    finally:
        for g in groups:
            remove_placement_group(g)
    result.seconds = time.perf_counter() - started
    result.per_node = dict(nodes)
    y_all = store.load()
    result.outputs = torch.from_numpy(np.asarray(y_all)).float()
    return result, sorted(placements, key=lambda p: p.index)
