"""The one runtime of a CrypTen party process: join the others, run, leave.

Every CrypTen party runs through :func:`run_crypten_party`, however it was
started: the processes a :class:`~secure_infer.backends.crypten._pool.PartyPool`
starts for ``wrap(..., backend="crypten")``, and the ``secure-infer party``
process started by hand on each host (``protocols.mpc``). It brings up
CrypTen for one rank, over torch.distributed (gloo) or, with
``PartySettings(tls=TLSLinks(...))``, over mutually authenticated TLS links
(:mod:`~secure_infer.backends.crypten._tls`), announces each phase, runs the
caller's work, and tears down; a failure becomes a :class:`PartyFailure` that
names the party, its role and the phase.

Roles are named from :data:`ROLES` everywhere: phase lines, errors, reports.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError
from secure_infer.backends.crypten._tls import (
    DEALER_REFUSED,
    TLSLinks,
    init_tls_communicator,
    shutdown_tls_communicator,
)

T = TypeVar("T")

MODEL_OWNER = 0
DATA_OWNER = 1
ROLES = ("model-owner", "data-owner", "helper", "dealer")

# What a party sees when a peer dies or stops answering (gloo raises RuntimeError,
# sockets OSError), plus the ValueErrors a job raises on a peer's bad metadata.
PEER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError, TimeoutError)


def role_of(rank: int, world_size: int) -> str:
    """The role of ``rank`` in inference among ``world_size`` computing parties.

    Rank 0 holds the model, rank 1 the input (and alone learns the output),
    ranks 2.. hold shares only; rank ``world_size`` is the trusted dealer.
    Training names its parties from the same :data:`ROLES` by who holds data.
    """
    if rank == world_size:
        return "dealer"
    return {MODEL_OWNER: "model-owner", DATA_OWNER: "data-owner"}.get(rank, "helper")


PHASE_PREFIX = "[secure-infer] party "


def phase_line(rank: int, role: str, phase: str) -> str:
    """The line a party prints as it enters ``phase`` (see :func:`parse_phase_line`).

    Launchers and operators read it from the party's log to see how far each
    party got; failure drills strike at a named phase rather than a guessed second.
    """
    return f"{PHASE_PREFIX}{rank} ({role}) phase: {phase}"


def parse_phase_line(line: str) -> tuple[int, str] | None:
    """``(rank, phase)`` from a line written by :func:`phase_line`, else None."""
    if not line.startswith(PHASE_PREFIX) or " phase: " not in line:
        return None
    head, _, phase = line.rstrip().rpartition(" phase: ")
    rank = head[len(PHASE_PREFIX):].split(" ", 1)[0]
    return (int(rank), phase) if rank.isdigit() and phase else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now: a rendezvous port for parties on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ParameterError` if rank 0 could not listen on ``host:port``, before any party starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ParameterError(
                f"master port {host}:{port} is busy ({exc.strerror}); pass another port, "
                "or port=None to pick a free one"
            ) from None


@dataclass(frozen=True)
class PartySettings:
    """Where and how one party joins the others: the same at every party but ``rank`` and ``role``.

    Attributes:
        rank: 0..world_size-1 for a computing party; world_size for the dealer.
        world_size: computing parties (the dealer not counted).
        master_addr, master_port: rank 0's torch.distributed rendezvous.
        dealer: a trusted dealer (rank world_size) hands out Beaver triples
            (CrypTen's TTP provider); every party must say the same.
        timeout: seconds any collective may wait for a peer, so a party whose
            peer died fails within it; None keeps gloo's 30 minutes, for a
            caller that watches the party from outside (the pool does).
        threads: torch threads in this party.
        precision_bits: CrypTen's fixed-point fractional bits.
        role: the name in phase lines and errors, from :data:`ROLES`;
            :func:`role_of` by default.
        tls: meet over mutually authenticated TLS links (addresses, this
            party's certificate and key, the CA) instead of the gloo
            rendezvous at ``master_addr:master_port``, which is then unused.
            No dealer then.
    """

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    dealer: bool = False
    timeout: float | None = None
    threads: int = 1
    precision_bits: int = 16
    role: str = ""
    tls: TLSLinks | None = None

    def __post_init__(self) -> None:
        if not self.role:
            object.__setattr__(self, "role", role_of(self.rank, self.world_size))
        if self.role not in ROLES:
            raise ParameterError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.tls is not None:
            if self.dealer:
                raise ParameterError(DEALER_REFUSED)
            if len(self.tls.peers) != self.world_size:
                raise ParameterError(f"TLS links list {len(self.tls.peers)} peer addresses for {self.world_size} "
                                     "parties: give one HOST:PORT per rank")

    @property
    def is_dealer(self) -> bool:
        return self.dealer and self.rank == self.world_size

    @property
    def name(self) -> str:
        """``party R (role)``, as every message about this party says it."""
        return f"party {self.rank} ({self.role})"


class PartySession:
    """What the work given to :func:`run_crypten_party` receives: CrypTen, initialised for this rank.

    Attributes:
        settings: this party's settings.
        crypten: the CrypTen module, joined to the other parties.
        started: ``time.perf_counter()`` just before the party joined its peers.
    """

    def __init__(self, settings: PartySettings, crypten: Any, started: float) -> None:
        self.settings = settings
        self.crypten = crypten
        self.started = started
        self._comm = crypten.communicator.get()

    @property
    def rank(self) -> int:
        return self.settings.rank

    @property
    def group(self) -> Any:
        """The computing parties' group for public metadata: a torch.distributed group over gloo,
        a :class:`~secure_infer.backends.crypten.TLSGroup` over TLS links."""
        return self._comm.main_group

    def reset_stats(self) -> None:
        """Start counting bytes sent and rounds afresh."""
        self._comm.reset_communication_stats()

    def stats(self) -> dict[str, Any]:
        """Bytes this party sent and rounds it took part in since the last :meth:`reset_stats`."""
        return dict(self._comm.get_communication_stats())


def _configure(settings: PartySettings) -> Any:
    """Set CrypTen's environment for one party (rendezvous, rank, provider) and return the module."""
    os.environ.update(
        {
            "RENDEZVOUS": f"tcp://{settings.master_addr}:{settings.master_port}",
            "MASTER_ADDR": settings.master_addr,
            "MASTER_PORT": str(settings.master_port),
            "WORLD_SIZE": str(settings.world_size),
            "RANK": str(settings.rank),
            "DISTRIBUTED_BACKEND": "gloo",
        }
    )
    torch.set_num_threads(settings.threads)
    from secure_infer._crypten_compat import load_crypten

    crypten = load_crypten()
    if settings.timeout is not None:
        import datetime

        import torch.distributed.distributed_c10d as c10d

        # crypten.init() calls init_process_group/new_group without a timeout:
        # they read this module default at call time
        c10d.default_pg_timeout = datetime.timedelta(seconds=settings.timeout)
    crypten.cfg.communicator.verbose = True  # counts bytes and rounds
    crypten.cfg.encoder.precision_bits = settings.precision_bits
    crypten.cfg.mpc.provider = "TTP" if settings.dealer else "TFP"
    return crypten


def announce(settings: PartySettings, phase: str) -> None:
    """Print :func:`phase_line` for ``settings``' party, flushed at once (launchers read it from the log)."""
    print(phase_line(settings.rank, settings.role, phase), flush=True)


def run_crypten_party(settings: PartySettings, work: Callable[[PartySession], T], *, phase: str,
                      on_phase: Callable[[str], None] | None = None) -> T | None:
    """Run one party from rendezvous to teardown and return what ``work`` returned (the dealer: None).

    The party enters, in order: ``rendezvous`` (before it has joined its
    peers); then ``phase`` (``inference``, ``training``...), once all have,
    where ``work(session)`` runs, or ``dealing`` for the dealer, which serves
    Beaver triples until rank 0 ends the job; then ``shutdown``, where
    CrypTen is torn down. ``on_phase(phase)`` is called as it enters each;
    by default it prints :func:`phase_line`.

    Over TLS links (``settings.tls``) a peer refused at the rendezvous (a
    certificate the CA did not sign, or of another rank) fails it at once; a
    party that fails closes its links, so its peers fail at once too.

    Raises:
        ParameterError: ``settings.tls`` names missing files or a certificate
            of another rank (before any peer is contacted).
        PartyFailure: when a peer died or stopped answering (within
            ``settings.timeout``), or ``work`` failed on a peer error; the
            message names this party, its role and the phase, and ``details``
            holds the traceback. The party is not torn down then: its gloo
            threads may still wait on the dead peer, so the process should exit.
    """
    if settings.tls is not None:
        settings.tls.validate(settings.rank)
    enter = on_phase if on_phase is not None else (lambda name: announce(settings, name))
    current = "rendezvous"
    enter(current)
    crypten = _configure(settings)
    try:
        if settings.is_dealer:
            current = "dealing"
            enter(current)
            crypten.mpc.provider.TTPServer()  # returns when rank 0 sends "terminate"
            return None
        started = time.perf_counter()
        if settings.tls is not None:
            init_tls_communicator(settings.rank, settings.tls)  # crypten.init() over the TLS links
        else:
            crypten.init()
        session = PartySession(settings, crypten, started)
        session.reset_stats()
        current = phase
        enter(current)
        result = work(session)
        current = "shutdown"
        enter(current)
        if settings.tls is not None:
            shutdown_tls_communicator()
        else:
            crypten.uninit()
        return result
    except (PartyFailure, ProtocolError) as exc:  # from the TLS links: they name the peer and the cause
        if settings.tls is not None:
            shutdown_tls_communicator()  # peers waiting on this party fail at once, not after their timeout
        text = str(exc)
        for prefix in (f"party {settings.rank} cannot join: ", f"party {settings.rank}: "):
            text = text.removeprefix(prefix)
        failure = PartyFailure(f"{settings.name} failed during {current}: {text}")
        failure.details = traceback.format_exc()
        raise failure from exc
    except PEER_ERRORS as exc:
        if settings.tls is not None:
            shutdown_tls_communicator()
        text = str(exc).strip()
        cause = text.splitlines()[0] if text else type(exc).__name__
        limit = f" (collective timeout {settings.timeout:.0f} s)" if settings.timeout is not None else ""
        failure = PartyFailure(
            f"{settings.name} failed during {current}: {cause}. A peer probably exited or "
            f"stopped answering{limit}; check the other parties' logs"
        )
        failure.details = traceback.format_exc()
        raise failure from exc
