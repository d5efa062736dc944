"""Checks on a real two-node Ray cluster: placement, a lost node's worker, MPC parties on their own hosts.

Start the cluster (two network namespaces, two addresses), then run this inside
the head's namespace so the client sits on the head's host:

    sudo bash scripts/ray-netns.sh up
    sudo ip netns exec si-a .venv/bin/python benchmarks/ray_cluster.py --address 10.77.0.2:6379 --out DIR
    sudo bash scripts/ray-netns.sh down

It writes DIR/cluster.json and prints it: (1) HE scoring of the digits test
split x20 with blocks per node; (2) the same job with node B's worker process
killed after the first block, still complete and correct; (3) MPC scoring
with party 0 placed on node A and party 1 on node B for every block, against
the same model's parties on one machine; (4) that nothing sent to a worker
held the secret key or an input; (5) the bench's scale-out cells with the
cluster's beside the local ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch

import secure_infer as si
from secure_infer import datasets, zoo
from secure_infer.backends.tenseal import to_bytes
from secure_infer.engine import RayEngine, audit_outgoing
from secure_infer.scoring import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the Ray head, HOST:PORT")
    parser.add_argument("--out", type=Path, default=Path("cluster-report"))
    parser.add_argument("--repeat", type=int, default=20, help="test split copies to score (20: 9,000 inputs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"address": args.address}

    data = datasets.load_digits(seed=0)
    z = zoo.pretrained("cryptonets", data, seed=0)
    x = data.x_test.repeat(args.repeat, 1, 1, 1)
    enc = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="batch", calibration=data.x_train)
    plain = z.model(x).detach()
    engine = RayEngine(args.address)
    import ray

    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    report["nodes"] = nodes
    sent: list[bytes] = []
    with audit_outgoing(sent.append):
        engine.start(enc.program.worker_spec())  # the actors start before the timing
        result = score(enc, x, engine)
    report["he"] = {**result.summary(), "blocks_per_host": {nodes[k]: v for k, v in result.per_node.items()},
                    "workers": engine.workers,
                    "argmax_agreement": float((result.outputs.argmax(1) == plain.argmax(1)).float().mean()),
                    "max_abs_error": float((result.outputs - plain).abs().max())}
    secret = to_bytes(enc.program.client.keys._secret_key)
    flat = x.double().reshape(len(x), -1).numpy()
    # the secret key, an input, and the start of each feature column as the client encrypts it (columns of
    # fewer than 3 distinct values, such as an always-blank pixel, would match any zero padding: left out)
    needles = [secret[len(secret) // 2 : len(secret) // 2 + 64], x[0].numpy().tobytes(), flat[0].tobytes(),
               *(flat[:32, j].tobytes() for j in range(flat.shape[1]) if len(set(flat[:32, j])) >= 3)]
    report["audit"] = {"objects_sent": len(sent), "bytes_sent": sum(map(len, sent)),
                       "needles": len(needles),
                       "holding_secret_key_or_input": sum(any(n in b for n in needles) for b in sent)}

    # the same job, node B's worker killed once the first block is back
    placement = engine.placement()
    head = next(k for k, v in nodes.items() if v == args.address.split(":")[0])
    victim = next(pid for node, pid in placement if node != head)
    killed: list[int] = []

    def kill_once(_inputs: int, _blocks: int) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    started = time.perf_counter()
    lost = score(enc, x, engine, on_block=kill_once)
    report["he_worker_killed"] = {
        **lost.summary(), "killed_pid": victim, "wall_s": time.perf_counter() - started,
        "blocks_per_host": {nodes[k]: v for k, v in lost.per_node.items()},
        "complete": lost.inputs == len(x), "actor_processes_lost": engine.lost,
        "argmax_agreement": float((lost.outputs.argmax(1) == plain.argmax(1)).float().mean()),
        "max_abs_error": float((lost.outputs - plain).abs().max())}
    engine.close()

    # MPC: party 0 (model owner) on node A, party 1 (data owner) on node B
    from secure_infer.scoring_mpc import score_mpc

    lenet = zoo.pretrained("lenet", data, seed=0)
    xm = data.x_test[:64]
    with si.wrap(lenet.model, "crypten", sample_input=xm[:1]) as mpc:
        here = mpc.logits(xm)
        mpc_result, blocks = score_mpc(mpc, xm, address=args.address, block=16)
    report["mpc"] = {
        **mpc_result.summary(),
        "placement": [{"block": b.index, "party_hosts": {r: nodes[n] for r, n in b.nodes.items()},
                       "seconds": round(b.seconds, 2), "bytes": b.bytes, "rounds": b.rounds} for b in blocks],
        "party0_on_head_every_block": all(nodes[b.nodes[0]] == "10.77.0.2" for b in blocks),
        "party1_on_worker_every_block": all(nodes[b.nodes[1]] == "10.77.0.3" for b in blocks),
        "argmax_equal_to_one_machine": bool(torch.equal(mpc_result.outputs.argmax(1), here.argmax(1))),
        "max_abs_difference_to_one_machine": float((mpc_result.outputs - here).abs().max())}
    # the bench's scale-out cells, the cluster's beside the local ones (same run)
    from secure_infer.bench import scale_out_sweep

    ray.shutdown()
    report["scale_out"] = scale_out_sweep(0, data, repeat=args.repeat, cluster=args.address)
    text = json.dumps(report, indent=1, default=str)
    (args.out / "cluster.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
