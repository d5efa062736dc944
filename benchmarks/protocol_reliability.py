"""Reliability figures for the protocol layer (issue: protocols), measured, not asserted.

Run: python benchmarks/protocol_reliability.py [--fuzz 2000] [--clients 8] [--requests 10]

1. Fuzzing: mutated/random frames against a live HE server; counts crashes
   (internal errors) and hangs (no answer or close within 5 s).
2. Concurrency: C clients x R requests at once, every answer checked against plaintext.
3. Key material per session vs bytes per query.
4. MPC: a party killed mid-inference, and a party frozen (SIGSTOP); time until every
   other party exited on its own with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import secure_infer as si  # noqa: E402
from protocols.he import HEClient, HEServer  # noqa: E402
from protocols.mpc import launch_local, local_parties  # noqa: E402


def fuzz(server: HEServer, cases: int, session: str, ciphertext: bytes) -> dict:
    from protocols.common.fuzz import fuzz_cases, send_and_wait_for_close

    hangs = sum(not send_and_wait_for_close(server.address, data)
                for data in fuzz_cases(cases, session=session, ciphertext=ciphertext, seed=7))
    return {"cases": cases, "crashes": server.stats.internal_errors, "hangs": hangs,
            "server_error_codes": dict(server.stats.errors), "queries_evaluated": server.stats.queries}


def concurrency(server: HEServer, model: torch.nn.Module, x: torch.Tensor, clients: int, requests: int) -> dict:
    wrong, errors = [], []

    def run(index: int) -> None:
        try:
            with HEClient(server.address) as client:
                for r in range(requests):
                    xi = x[(index * requests + r) % len(x)][None]
                    with torch.no_grad():
                        if int(client.predict(xi).argmax()) != int(model(xi).argmax()):
                            wrong.append((index, r))
        except Exception as exc:
            errors.append(repr(exc))

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "requests_each": requests, "answers": clients * requests - len(errors) * requests,
            "wrong": len(wrong), "errors": errors, "seconds": time.perf_counter() - started}


def mpc_drills(timeout: float) -> dict:
    data = si.datasets.load("digits")
    z = si.zoo.pretrained("lenet", data)
    work = Path(tempfile.mkdtemp(prefix="si-drill-"))
    model = si.zoo.save_model(z, work / "lenet.pt")
    out = {}
    for victim in (0, 1, 2):
        configs = local_parties(3, task="infer", timeout=timeout, per_rank={
            0: {"model": model}, 1: {"input": "digits:0-360", "output": work / "y.npy"}})
        r = launch_local(configs, work / f"kill-{victim}", kill_after=(victim, 6.0), grace=timeout + 60)
        out[f"kill rank {victim}"] = {"others_exited_after_s": r.others_exited_after_s, "exit_codes": r.exit_codes,
                                      "killed_by_launcher": r.killed_by_launcher,
                                      "errors": {k: v[:160] for k, v in r.errors.items()}}
    # a frozen party: alive but silent; only the collective timeout can end the others
    configs = local_parties(3, task="infer", timeout=timeout, per_rank={
        0: {"model": model}, 1: {"input": "digits:0-360", "output": work / "y.npy"}})
    started = time.monotonic()
    result: dict = {}

    def freeze_helper() -> None:
        time.sleep(6.0)
        pids = subprocess.run(["pgrep", "-f", "protocols.cli party --rank 2 "], capture_output=True, text=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGSTOP)
        result["frozen"] = pids

    t = threading.Thread(target=freeze_helper)
    t.start()
    r = launch_local(configs, work / "freeze", grace=15)
    t.join()
    for pid in result.get("frozen", []):
        try:
            os.kill(int(pid), signal.SIGCONT)
        except ProcessLookupError:
            pass
    out["freeze rank 2 (SIGSTOP)"] = {"first_failure_s": r.first_failure_s, "wall_s": time.monotonic() - started,
                                      "exit_codes": r.exit_codes, "killed_by_launcher": r.killed_by_launcher,
                                      "errors": {k: v[:160] for k, v in r.errors.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--mpc-timeout", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-mpc", action="store_true")
    args = parser.parse_args()
    data = si.datasets.load("digits")
    z = si.zoo.pretrained("cryptonets", data)
    report: dict = {}
    # default timeouts for real clients; short ones for the fuzzing, so truncated frames end quickly
    with HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train) as server:
        with HEClient(server.address) as client:
            client.predict(data.x_test[:1])
            stats = client.last_query
            report["keys"] = {"key_upload_bytes_once": client.key_upload_bytes,
                              "bytes_per_query": stats.bytes_up + stats.bytes_down,
                              "query_round_trip_s": stats.round_trip_s}
        report["concurrency"] = concurrency(server, z.model, data.x_test, args.clients, args.requests)
    with HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train, idle_timeout=2.0,
                             frame_timeout=2.0) as server:
        from secure_infer.backends.tenseal import to_bytes

        with HEClient(server.address) as client:
            ct = to_bytes(next(client.cipher.requests(client.cipher.check_input(data.x_test[:1])))[1][0])
            session = client.session_id
        report["fuzz"] = fuzz(server, args.fuzz, session, ct)
    if args.skip_mpc:
        print(json.dumps(report, indent=2, default=str))
        return
    report["mpc"] = mpc_drills(args.mpc_timeout)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
