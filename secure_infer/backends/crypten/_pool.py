"""Real CrypTen parties: one OS process per party, talking over TCP (gloo).

The parent process (the caller of ``wrap``) is not a party. It hands the model
owner the weighted graph, every other party a weightless copy, and the data
owner each input; it gets back only what the data owner decrypts. Rank 0 is
the model owner, rank 1 the data owner, ranks 2.. are helper parties; with
``dealer=True`` CrypTen's trusted third party runs as one more process.

A party that dies makes :meth:`PartyPool.run` raise :class:`PartyFailure`
as soon as its pipe closes or its process has exited (naming the rank and its
exit code), a party that hangs (stopped, deadlocked) makes it raise within
``timeout`` seconds, and in both cases every party process is stopped: gloo on
its own would leave the survivors blocked in a collective for 30 minutes.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any

import torch

from secure_infer._errors import ParameterError, PartyFailure
from secure_infer.backends.crypten._runtime import (
    DATA_OWNER,
    PartySession,
    PartySettings,
    check_port_free,
    free_port,
    role_of,
    run_crypten_party,
)
from secure_infer.graph import Graph


@dataclass(frozen=True)
class NativeSpec:
    """CrypTen's own converter (``crypten.nn.from_pytorch``) as the party program.

    The benchmarks' anchor: the same model and parties with secure-infer's
    translation taken out, so the wrapper's overhead can be measured. The
    coordinator exports the ONNX graph once (CrypTen's own export path); the
    model owner gets it with weights, the others with zeroed initializers, so
    every party converts the identical graph.
    """

    onnx_bytes: bytes

def _send(conn: Connection, obj: Any) -> None:
    """Send between the coordinator and its own party processes.

    torch.save bytes rather than multiprocessing's pickler, which would pass
    tensors as shared-memory handles: each party must hold its own copy.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    conn.send_bytes(buf.getvalue())


def _recv(conn: Connection) -> Any:
    return torch.load(io.BytesIO(conn.recv_bytes()), weights_only=False)


def describe_exit(code: int) -> str:
    """``code`` as a person reads it: ``-9`` is ``-9 (killed by SIGKILL)``."""
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"{code} (killed by signal {-code})"
    return str(code)


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``T``: stopped), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # "pid (comm) S ...": comm may hold spaces or parentheses, the state follows the last ")"
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class PartyJob:
    """A one-shot computation every party runs once (encrypted training, say).

    ``run(crypten, rank)`` executes inside the party after ``crypten.init()``;
    each rank's job object carries only that rank's own data.
    """

    def run(self, crypten: Any, rank: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def party_main(settings: PartySettings, payload: Graph | NativeSpec | PartyJob | None, conn: Connection) -> None:
    """Run one party started by :class:`PartyPool` through :func:`run_crypten_party`.

    A graph (or :class:`NativeSpec`) payload: share the weights, say ``ready``,
    then serve ``run`` requests until ``close``. A :class:`PartyJob`: run it
    once and report its result (with communication statistics) as the
    ``ready`` message. No payload: the dealer, ready as soon as it deals.
    Any failure goes back to the coordinator as the party's traceback.
    """

    def on_phase(phase: str) -> None:
        if phase == "dealing":
            _send(conn, ("ready", settings.rank, {}))

    def work(session: PartySession) -> None:
        if isinstance(payload, PartyJob):
            _run_job(session, payload, conn)
        else:
            assert payload is not None  # only the dealer has none, and it does not get here
            _serve(session, payload, conn)

    try:
        run_crypten_party(settings, work, phase="job" if isinstance(payload, PartyJob) else "inference",
                          on_phase=on_phase)
        if not settings.is_dealer:
            _send(conn, ("closed", settings.rank, {}))
    except Exception as exc:
        try:
            _send(conn, ("error", settings.rank, getattr(exc, "details", "") or traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
        raise SystemExit(1) from None


def _run_job(session: PartySession, job: PartyJob, conn: Connection) -> None:
    """Run ``job`` once, report its result as ``ready``, then wait for ``close``."""
    result = job.run(session.crypten, session.rank)
    ready = {"result": result, "seconds": time.perf_counter() - session.started, **session.stats()}
    _send(conn, ("ready", session.rank, ready))
    del job  # the job's own data is not needed while waiting to close
    while _recv(conn)[0] != "close":
        pass


def _serve(session: PartySession, graph: Graph | NativeSpec, conn: Connection) -> None:
    """Share the weights once, then evaluate each ``run`` request until ``close``."""
    from secure_infer.backends.crypten._program import NativeProgram, PartyProgram

    crypten, rank = session.crypten, session.rank
    program = PartyProgram(graph, crypten) if isinstance(graph, Graph) else NativeProgram(graph, crypten)
    _send(conn, ("ready", rank, {"setup_s": time.perf_counter() - session.started, **session.stats()}))
    while True:
        message = _recv(conn)
        if message[0] == "close":
            return
        _, x, shape, reveal = message
        session.reset_stats()
        t0 = time.perf_counter()
        mine = x if rank == DATA_OWNER else torch.empty(shape)
        x_enc = crypten.cryptensor(mine, src=DATA_OWNER)
        y_enc, revealed = program(x_enc, reveal=reveal, dst=DATA_OWNER)
        y = y_enc.get_plain_text(dst=DATA_OWNER)
        stats = session.stats()
        stats["seconds"] = time.perf_counter() - t0
        if rank == DATA_OWNER:
            _send(conn, ("result", rank, (y, revealed, stats)))
        else:
            _send(conn, ("result", rank, (None, {}, stats)))


class PartyPool:
    """Start ``parties`` CrypTen processes (plus a dealer) and keep them up across calls.

    ``timeout`` bounds every wait on a party (start-up, each call); it may be
    changed between calls. A party whose process exits is reported at once, a
    silent one after ``timeout``; either way all parties are stopped and the
    pool is closed (start a new one to go on).
    """

    def __init__(
        self,
        payloads: Sequence[Any],
        *,
        dealer: bool = False,
        master_addr: str = "127.0.0.1",
        port: int | None = None,
        timeout: float = 300.0,
        threads: int = 1,
        precision_bits: int = 16,
        roles: Sequence[str] | None = None,
    ) -> None:
        parties = len(payloads)
        if roles is not None and len(roles) != parties:
            raise ParameterError(f"give one role name per party: {len(roles)} for {parties}")
        self._roles = tuple(roles) if roles is not None else None
        if parties < 2:
            raise ParameterError("a party pool needs at least 2 parties (parties=1 is the in-process simulation)")
        if port is not None:
            check_port_free(master_addr, port)
            self._start(payloads, dealer, master_addr, port, timeout, threads, precision_bits)
            return
        # A port free now may be taken (another program's outgoing connection) before rank 0,
        # seconds later, listens on it: then start again on another one.
        for attempt in range(3):
            try:
                self._start(payloads, dealer, master_addr, free_port(master_addr), timeout, threads, precision_bits)
                return
            except PartyFailure as exc:
                if attempt == 2 or "EADDRINUSE" not in str(exc):
                    raise

    def _start(self, payloads: Sequence[Any], dealer: bool, master_addr: str, port: int, timeout: float,
               threads: int, precision_bits: int) -> None:
        parties = len(payloads)
        self.parties = parties
        self.dealer = dealer
        self.timeout = timeout
        self.address = f"{master_addr}:{port}"
        authkey = os.urandom(32)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._conns: list[Connection] = []
        self.setup: dict[int, dict[str, Any]] = {}
        total = parties + (1 if dealer else 0)
        env = {
            **os.environ,
            "SECURE_INFER_PARENT": f"{listener.address[0]}:{listener.address[1]}",
            "SECURE_INFER_AUTHKEY": authkey.hex(),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        try:
            for rank in range(total):
                # A fresh interpreter per party (not fork): no party inherits the
                # caller's memory, so only the model owner ever holds the weights.
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "secure_infer.backends.crypten._party", str(rank)],
                        env=env, stdin=subprocess.DEVNULL,
                    )
                )
            by_rank = self._accept(listener, total)
        finally:
            listener.close()
        self._conns = [by_rank[r] for r in range(total)]
        self._deliver(
            [(rank, ("init", PartySettings(rank, parties, master_addr, port, dealer=dealer, threads=threads,
                                           precision_bits=precision_bits),
                     None if rank == parties else payloads[rank]))
             for rank in range(total)],
            phase="start-up",
        )
        # a one-shot job reports its result as "ready": waiting for it is waiting for the job to run
        jobs = any(isinstance(p, PartyJob) for p in payloads)
        ready = self._collect("ready", range(total), phase="start-up or the job" if jobs else "start-up")
        self.setup = dict(ready)

    def _accept(self, listener: Listener, total: int) -> dict[int, Connection]:
        """Accept one authenticated connection per party, failing fast if one dies."""
        arrived: queue.Queue[Connection | BaseException] = queue.Queue()

        def accept_all() -> None:
            for _ in range(total):
                try:
                    arrived.put(listener.accept())
                except BaseException as exc:  # closed listener or failed auth
                    arrived.put(exc)
                    return

        threading.Thread(target=accept_all, daemon=True).start()
        by_rank: dict[int, Connection] = {}
        deadline = time.monotonic() + self.timeout
        while len(by_rank) < total:
            for rank, proc in enumerate(self._procs):
                if proc.poll() is not None and rank not in by_rank:
                    raise self._fail(self._exited(rank, "while starting"))
            if time.monotonic() > deadline:
                raise self._fail(f"parties did not connect within {self.timeout:.0f} s; all parties were stopped. "
                                 "The machine may be overloaded: pass a larger timeout=")
            try:
                item = arrived.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise self._fail(f"a party could not connect to the coordinator: {item}")
            # a party stopped right after connecting must not block the caller here
            if not item.poll(max(0.0, deadline - time.monotonic())):
                item.close()
                raise self._fail(f"a party connected but did not say which rank it is within {self.timeout:.0f} s; "
                                 "all parties were stopped")
            hello = _recv(item)
            by_rank[int(hello[1])] = item
        return by_rank

    @property
    def ranks(self) -> range:
        return range(self.parties)

    @property
    def pids(self) -> dict[int, int]:
        """Rank -> OS process id of every party still held (the dealer's rank is ``parties``).

        For monitoring and failure drills (a test may SIGKILL or SIGSTOP one);
        empty once the pool is closed.
        """
        return {rank: proc.pid for rank, proc in enumerate(self._procs)}

    def _name(self, rank: int) -> str:
        """``party R (ROLE)``; the role is the caller's name for it (``roles=``), else inference's."""
        if self._roles is not None and rank < len(self._roles):
            return f"party {rank} ({self._roles[rank]})"
        return f"party {rank} ({role_of(rank, self.parties)})"

    def _fail(self, message: str, details: str = "") -> PartyFailure:
        self.close(force=True)
        error = PartyFailure(message)
        error.details = details  # the party's full traceback, for debugging
        return error

    def _exited(self, rank: int, when: str) -> str:
        """The message for a party whose pipe closed or whose process ended ``when`` (``during inference``)."""
        proc = self._procs[rank]
        try:
            code = describe_exit(proc.wait(timeout=2))  # its pipe closes just before the exit status is set
        except subprocess.TimeoutExpired:
            code = "unknown (it closed its connection but had not exited yet)"
        advice = ("a signal from outside; SIGKILL is often the out-of-memory killer"
                  if proc.returncode is not None and proc.returncode < 0 else "its traceback is printed above")
        return (f"{self._name(rank)} exited with code {code} {when}; all parties were stopped. "
                f"Cause: {advice}. Start the parties again (wrap the model again) to continue")

    def _explain(self, rank: int, phase: str, traceback_text: str) -> str:
        """Name the root cause: a party that died makes its peers fail in gloo."""
        last = [line for line in traceback_text.strip().splitlines() if line.strip()]
        cause = last[-1].strip() if last else "unknown error"
        time.sleep(0.2)  # let a dying peer's exit status settle
        dead = [r for r, proc in enumerate(self._procs) if r != rank and proc.poll() is not None]
        if dead:
            names = ", ".join(f"{self._name(r)} exited with code {describe_exit(self._procs[r].returncode)}"
                              for r in dead)
            return f"{names} during {phase}; {self._name(rank)} then failed ({cause}); all parties were stopped"
        return f"{self._name(rank)} failed during {phase}: {cause}; all parties were stopped"

    def _silent(self, waiting: set[int], phase: str) -> str:
        """The message for parties that did not answer within ``timeout``, naming a stopped one as the cause."""
        stopped = [r for r in sorted(waiting) if process_state(self._procs[r].pid) in ("T", "t")]
        others = [r for r in sorted(waiting) if r not in stopped]
        within = f"within {self.timeout:.0f} s during {phase}"
        if stopped:
            names = ", ".join(self._name(r) for r in stopped)
            what = f"{names} {'is' if len(stopped) == 1 else 'are'} stopped (SIGSTOP or a debugger) and did not answer {within}"
            if others:
                what += f" ({', '.join(self._name(r) for r in others)} waited on it)"
        else:
            what = f"{', '.join(self._name(r) for r in others)} did not answer {within}"
        return (f"{what}; all parties were stopped. Resume or stop whatever paused the party, or pass a larger "
                "timeout= if the model legitimately needs longer, then start the parties again")

    def _deliver(self, messages: list[tuple[int, Any]], *, phase: str) -> None:
        """Send each ``(rank, message)`` within ``timeout``.

        From a helper thread: a stopped party's full socket buffer would
        otherwise block the caller in the write forever.
        """
        state: dict[str, Any] = {"rank": None, "error": None}

        def send_all() -> None:
            for rank, message in messages:
                state["rank"] = rank
                try:
                    _send(self._conns[rank], message)
                except (BrokenPipeError, OSError) as exc:
                    state["error"] = exc
                    return
            state["rank"] = None

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        sender.join(self.timeout)
        if sender.is_alive():
            rank = int(state["rank"])
            stopped = process_state(self._procs[rank].pid) in ("T", "t")
            self._stop_processes()  # the blocked write fails once its reader is gone
            sender.join(5)
            raise self._fail(f"{self._name(rank)}{' is stopped (SIGSTOP or a debugger) and' if stopped else ''} "
                             f"did not take its {phase} message within {self.timeout:.0f} s; all parties were "
                             "stopped. Resume or stop whatever paused it, then start the parties again")
        if state["error"] is not None:
            raise self._fail(self._exited(int(state["rank"]), f"before {phase}"))

    def _collect(self, kind: str, ranks: Any, *, phase: str) -> dict[int, Any]:
        """Wait for ``kind`` from every rank; turn deaths, errors and timeouts into PartyFailure.

        A closed pipe (EOF) or an exited process is reported at once, from its
        own exit code, not only when a surviving peer's collective fails.
        """
        waiting = set(ranks)
        got: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        conn_rank = {id(conn): r for r, conn in enumerate(self._conns)}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(self._silent(waiting, phase))
            # every party (the dealer too) is watched: any death stalls the others
            for ready in wait(self._conns, timeout=min(left, 0.2)):
                assert isinstance(ready, Connection)
                rank = conn_rank[id(ready)]
                try:
                    what, _, payload = _recv(ready)
                except (EOFError, OSError):
                    raise self._fail(self._exited(rank, f"during {phase}")) from None
                if what == "error":
                    raise self._fail(self._explain(rank, phase, payload), details=payload)
                if what == kind and rank in waiting:
                    got[rank] = payload
                    waiting.discard(rank)
            for rank, proc in enumerate(self._procs):
                # an exited party's last messages (its error) are read above first
                if proc.poll() is not None and not self._conns[rank].poll():
                    raise self._fail(self._exited(rank, f"during {phase}"))
        return got

    def run(self, x: torch.Tensor, reveal: frozenset[str] = frozenset()) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[int, dict[str, Any]]]:
        """Secret-share ``x`` from the data owner, evaluate, open the output to the data owner."""
        if not self._procs:
            raise PartyFailure("the party pool is closed; wrap the model again")
        for rank, proc in enumerate(self._procs):
            if proc.poll() is not None:  # died between calls: say so before anyone waits on it
                raise self._fail(self._exited(rank, "before inference"))
        shape = tuple(x.shape)
        # the input goes to the data owner only
        self._deliver([(rank, ("run", x if rank == 1 else None, shape, reveal)) for rank in self.ranks],
                      phase="inference")
        results = self._collect("result", self.ranks, phase="inference")
        y, revealed, _ = results[1]
        stats = {rank: r[2] for rank, r in results.items()}
        return y, revealed, stats

    def kill(self, rank: int) -> None:
        """Kill one party abruptly (for failure testing)."""
        self._procs[rank].kill()
        self._procs[rank].wait()

    def _stop_processes(self) -> None:
        """SIGKILL every party still running and reap it; a stopped (SIGSTOP) one is killed too."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL ends a stopped process as well; SIGCONT is not needed
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
                pass

    def close(self, force: bool = False) -> None:
        """Stop every party; graceful unless ``force`` or a party is stuck."""
        if not self._procs:
            return
        try:
            if not force:
                for rank in range(len(self._conns)):
                    if rank >= self.parties:
                        continue  # the dealer stops when rank 0 tells it to
                    try:
                        _send(self._conns[rank], ("close",))
                    except (BrokenPipeError, OSError):
                        force = True
            deadline = time.monotonic() + (0 if force else 10)
            for proc in self._procs:
                try:
                    proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            self._stop_processes()
        finally:
            for conn in self._conns:
                conn.close()
            self._procs, self._conns = [], []

    def __del__(self) -> None:
        try:
            self.close(force=True)
        except Exception:
            pass


def child_main(rank: int) -> None:
    """Entry point of a party process started by :class:`PartyPool`."""
    import warnings

    # CrypTen 0.4.1's own deprecation and numpy-writability warnings, once per
    # party, say nothing to the user of secure-infer.
    warnings.filterwarnings("ignore", module=r"crypten(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    host, port = os.environ["SECURE_INFER_PARENT"].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop("SECURE_INFER_AUTHKEY")))
    _send(conn, ("hello", rank))
    _, settings, payload = _recv(conn)
    party_main(settings, payload, conn)
