"""Run every party of an MPC job as local processes, for demos and tests.

Each party is the same ``secure-infer party`` command a user would start by
hand on another host; the launcher only starts them, waits, and reports. When
a party fails, it measures how long the others take to exit on their own
(each with its own clear error), and kills any that outlive ``grace``.

Failure drills strike at a named phase (``kill_when``): the launcher reads the
marker line each party prints as it enters a phase, so the kill lands at the
same point of the protocol however loaded the machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocols.mpc.party import PartyConfig, PartyOutcome
from secure_infer._errors import ParameterError
from secure_infer.backends.crypten import free_port, parse_phase_line, role_of

__all__ = ["LaunchResult", "launch_local", "local_parties", "party_command"]


def party_command(config: PartyConfig, summary: Path | None = None) -> list[str]:
    """The ``secure-infer party`` command line for ``config``."""
    cmd = [sys.executable, "-m", "protocols.cli", "party", "--rank", str(config.rank),
           "--world-size", str(config.world_size), "--role", config.role,
           "--task", config.task, "--timeout", str(config.timeout)]
    if config.master:
        cmd += ["--master", config.master]
    if config.peers:
        cmd += ["--peers", ",".join(config.peers)]
    for flag, value in (("--model", config.model), ("--input", config.input), ("--output", config.output),
                        ("--data", config.data), ("--summary", summary), ("--tls-cert", config.tls_cert),
                        ("--tls-key", config.tls_key), ("--tls-ca", config.tls_ca),
                        ("--tls-listen", config.tls_listen)):
        if value is not None:
            cmd += [flag, str(value)]
    if config.dealer:
        cmd.append("--dealer")
    if config.insecure:
        cmd.append("--insecure")
    if config.task == "train":
        cmd += ["--hidden", str(config.hidden), "--epochs", str(config.epochs), "--lr", str(config.lr),
                "--batch-size", str(config.batch_size), "--seed", str(config.seed),
                "--weights-to", str(config.weights_to)]
    return cmd


@dataclass
class LaunchResult:
    """How each party ended.

    Attributes:
        outcomes: rank -> what a party that finished reported.
        errors: rank -> the last line a failed party printed (its error).
        exit_codes: rank -> process exit status (negative: killed by a signal).
        wall_s: seconds from start until every party had exited.
        first_failure_s: when the first party failed (seconds after start), if any.
        others_exited_after_s: seconds from the first failure until every other party had exited.
        killed_by_launcher: ranks the launcher had to kill (they outlived ``grace``).
        killed_at_s: when ``kill_after``/``kill_when`` struck (seconds after start), if it did.
        phases: rank -> the phases the party announced, in order (its last one is where it stopped).
    """

    outcomes: dict[int, PartyOutcome] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    exit_codes: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0
    first_failure_s: float | None = None
    others_exited_after_s: float | None = None
    killed_by_launcher: list[int] = field(default_factory=list)
    killed_at_s: float | None = None
    phases: dict[int, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and all(code == 0 for code in self.exit_codes.values())


def _announced(log: Path) -> list[str]:
    """The phases a party announced in its log so far, in order."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [parsed[1] for line in text.splitlines() if (parsed := parse_phase_line(line)) is not None]


def launch_local(configs: list[PartyConfig], workdir: Path, *, grace: float = 180.0,
                 kill_after: tuple[int, float] | None = None,
                 kill_when: tuple[int, str] | None = None,
                 prefix: Callable[[PartyConfig], list[str]] | None = None) -> LaunchResult:
    """Start one process per config, wait for all, and report.

    Args:
        configs: one per party (dealer included), each with the same master address.
        workdir: where each party's log and summary go (``party-R.log``, ``party-R.json``).
        grace: after a failure, seconds the others get to exit before they are killed.
        kill_after: ``(rank, seconds)``: kill that party abruptly after a wall-clock delay.
        kill_when: ``(rank, phase)``: kill that party abruptly as soon as every party but
            the dealer has announced ``phase`` (``inference``, ``training``...), so the
            survivors are known to be in that phase: the drill to prefer on a loaded machine.
        prefix: a command to run each party under, e.g. ``ip netns exec NS`` to
            give each party its own network namespace (its own host, in effect).
    """
    if kill_after is not None and kill_when is not None:
        raise ParameterError("pass kill_after or kill_when, not both")
    if kill_when is not None and kill_when[0] not in {c.rank for c in configs}:
        raise ParameterError(f"kill_when names rank {kill_when[0]}, which is not among the configs")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs = {}
    started = time.monotonic()
    for config in configs:
        config.validate()
        summary = workdir / f"party-{config.rank}.json"
        summary.unlink(missing_ok=True)
        logs[config.rank] = open(workdir / f"party-{config.rank}.log", "wb")  # noqa: SIM115
        command = (prefix(config) if prefix else []) + party_command(config, summary)
        procs[config.rank] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                              stdout=logs[config.rank], stderr=subprocess.STDOUT)
    result = LaunchResult()
    watched = [c.rank for c in configs if c.role != "dealer"]
    killed = False
    try:
        while len(result.exit_codes) < len(procs):
            now = time.monotonic() - started
            victim = None
            if kill_after is not None and now >= kill_after[1]:
                victim = kill_after[0]
            elif kill_when is not None and not killed and all(
                    kill_when[1] in _announced(workdir / f"party-{rank}.log") for rank in watched):
                victim = kill_when[0]
            if victim is not None and not killed:
                procs[victim].kill()
                killed = True
                result.killed_at_s = now
            for rank, proc in procs.items():
                if rank not in result.exit_codes and proc.poll() is not None:
                    result.exit_codes[rank] = proc.returncode
                    if proc.returncode != 0 and result.first_failure_s is None:
                        result.first_failure_s = now
            if result.first_failure_s is not None and now - result.first_failure_s > grace:
                for rank, proc in procs.items():
                    if proc.poll() is None and rank not in result.killed_by_launcher:
                        proc.kill()
                        result.killed_by_launcher.append(rank)
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for fh in logs.values():
            fh.close()
    result.wall_s = time.monotonic() - started
    if result.first_failure_s is not None:
        result.others_exited_after_s = result.wall_s - result.first_failure_s
    for config in configs:
        result.phases[config.rank] = _announced(workdir / f"party-{config.rank}.log")
        summary = workdir / f"party-{config.rank}.json"
        if result.exit_codes.get(config.rank) == 0 and summary.is_file():
            data = json.loads(summary.read_text())
            result.outcomes[config.rank] = PartyOutcome(**data)
        elif result.exit_codes.get(config.rank) != 0:
            lines = [ln for ln in (workdir / f"party-{config.rank}.log").read_text(errors="replace").splitlines() if ln.strip()]
            code = result.exit_codes.get(config.rank)
            said = [ln for ln in lines if ln.startswith("error:")] or lines
            result.errors[config.rank] = said[-1] if said else f"exited with code {code} and no output"
    return result


def local_parties(world_size: int, *, task: str, dealer: bool = False, port: int | None = None,
                  tls: Path | None = None, **fields: Any) -> list[PartyConfig]:
    """Configs for every party of a job on this host (``fields`` go to each; per-rank ones via ``per_rank``).

    ``tls``: a folder from ``secure-infer certs DIR --parties N``; the parties
    then meet over TLS links at free local ports instead of the gloo rendezvous.
    """
    per_rank: dict[int, dict[str, Any]] = fields.pop("per_rank", {})
    if tls is not None:
        ports: list[int] = []
        while len(ports) < world_size:  # each party its own port
            if (candidate := free_port()) not in ports:
                ports.append(candidate)
        peers = tuple(f"127.0.0.1:{p}" for p in ports)
        for rank in range(world_size):
            per_rank[rank] = {"peers": peers, "tls_cert": Path(tls) / f"party-{rank}.pem",
                              "tls_key": Path(tls) / f"party-{rank}.key", "tls_ca": Path(tls) / "ca.pem",
                              **per_rank.get(rank, {})}
    master = "" if tls is not None else f"127.0.0.1:{port or free_port()}"
    configs = []
    for rank in range(world_size + (1 if dealer else 0)):
        own = dict(fields) | per_rank.get(rank, {})
        if task == "infer":
            role = role_of(rank, world_size)
        else:
            role = "dealer" if rank == world_size else ("data-owner" if own.get("data") else "helper")
        configs.append(replace(PartyConfig(rank=rank, world_size=world_size, master=master, role=role, task=task,
                                           dealer=dealer), **own))
    return configs
