"""Where encrypted work runs when one process is not enough: worker processes here, or a Ray cluster.

A job is a list of independent blocks (a slot-sized batch of ciphertexts, a
batch of MPC inputs). Every worker builds its state once from a
:class:`WorkerSpec` (for HE: the evaluation keys and the compiled program),
then evaluates blocks sent to it. Two engines run the same jobs:

- :class:`LocalEngine`: spawned processes on this machine (no fork, so it is
  safe from threaded programs); a worker that dies has its blocks run again
  by a fresh one.
- :class:`RayEngine`: Ray actors on a cluster (``pip install
  'secure-infer[cluster]'``); the spec goes to the object store once, Ray
  restarts a lost actor and retries its blocks.

Everything a worker receives passes through :func:`outgoing`, the one place
where objects are serialized for another process, so a test (or an auditor)
can see every byte that leaves the client.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import multiprocessing
import os
import pickle
import sys
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from secure_infer._errors import EngineError, ParameterError

RETRIES = 3
"""How many times a block is run again after the worker running it was lost."""

_AUDIT: list[Callable[[bytes], None]] = []


def outgoing(obj: Any) -> bytes:
    """Serialize ``obj`` for a worker; every registered audit hook sees the bytes first."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    for hook in _AUDIT:
        hook(data)
    return data


class audit_outgoing:  # noqa: N801 - used as a context manager, like contextlib's
    """``with audit_outgoing(hook):`` calls ``hook(bytes)`` for everything sent to workers meanwhile."""

    def __init__(self, hook: Callable[[bytes], None]) -> None:
        self.hook = hook

    def __enter__(self) -> audit_outgoing:
        _AUDIT.append(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        _AUDIT.remove(self.hook)


def split(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive blocks of at most ``size`` (the last may be shorter)."""
    if size < 1:
        raise ParameterError(f"block size must be >= 1, got {size}")
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


class WorkerSpec(Protocol):
    """What a worker needs: built once per worker, then run on each block sent to it."""

    def build(self) -> Any: ...

    def run(self, state: Any, payload: Any) -> Any: ...


@dataclass
class Done:
    """One finished block: its index, the worker's result, and where it ran."""

    index: int
    result: Any
    node: str
    worker: int
    attempts: int = 1


class Engine(ABC):
    """Runs :class:`WorkerSpec` blocks on ``workers`` workers; results as they finish."""

    workers: int
    same_host: bool = False
    """Whether every worker runs on this machine (payloads may then skip compression)."""

    @abstractmethod
    def run(self, spec: WorkerSpec, blocks: Iterable[tuple[int, Any]], *,
            in_flight: int | None = None) -> Iterator[Done]:
        """Evaluate ``(index, payload)`` blocks; yields :class:`Done` in completion order.

        ``blocks`` is pulled lazily, at most ``in_flight`` (default: twice the
        workers) ahead of the results, so a client encrypts no further ahead
        than the workers can take. A block whose worker is lost runs again, up
        to :data:`RETRIES` times; a block that fails by itself (an exception in
        ``spec.run``) raises :class:`EngineError` at once.
        """

    @abstractmethod
    def start(self, spec: WorkerSpec) -> None:
        """Start the workers for ``spec`` before the first block."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers."""

    def describe(self) -> str:
        return f"{type(self).__name__}({self.workers} workers)"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- local processes

_STATE: dict[str, Any] = {}


def _local_init(spec_bytes: bytes, threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:  # BLAS too: workers side by side, each with as many threads as cores, would fight over them
        from threadpoolctl import threadpool_limits

        _STATE["blas"] = threadpool_limits(threads)
    except ImportError:  # pragma: no cover - a scikit-learn dependency
        pass
    spec = pickle.loads(spec_bytes)
    _STATE["spec"] = spec
    _STATE["state"] = spec.build()


def _local_run(payload_bytes: bytes) -> tuple[bytes, int]:
    spec, state = _STATE["spec"], _STATE["state"]
    result = spec.run(state, pickle.loads(payload_bytes))
    return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), os.getpid()


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Start processes without re-running the caller's script in them.

    A spawned process normally imports ``__main__`` first, which runs an
    unguarded script again (and fails). Workers need only this module, so
    while they start, ``__main__`` is an empty module.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class LocalEngine(Engine):
    """``workers`` spawned processes on this machine, started on first use and kept for later jobs.

    Spawned, not forked: a threaded program (the HE server) may use it, and a
    worker shares no memory with the client, so it holds only what was sent
    to it (see :func:`outgoing`).
    """

    same_host = True

    def __init__(self, workers: int = 2, *, threads: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ParameterError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.threads = threads
        self._pool: cf.ProcessPoolExecutor | None = None
        self._spec: WorkerSpec | None = None
        self._spec_bytes: bytes | None = None
        self.lost = 0  # worker processes lost so far (their blocks ran again)

    def _ensure(self, spec: WorkerSpec) -> cf.ProcessPoolExecutor:
        if self._pool is not None and self._spec is spec:
            return self._pool
        self.close()
        self._spec = spec
        self._spec_bytes = outgoing(spec)  # once; each process gets it as it starts
        return self._restart()

    def _restart(self) -> cf.ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        assert self._spec_bytes is not None
        start = functools.partial(_local_init, self._spec_bytes, self.threads)
        self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=start)
        return self._pool

    def run(self, spec: WorkerSpec, blocks: Iterable[tuple[int, Any]], *,
            in_flight: int | None = None) -> Iterator[Done]:
        pool = self._ensure(spec)
        limit = in_flight or 2 * self.workers
        source = iter(blocks)
        pending: dict[cf.Future[tuple[bytes, int]], tuple[int, bytes, int]] = {}
        exhausted = False
        node = os.uname().nodename
        while True:
            while not exhausted and len(pending) < limit:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, payload = item
                data = outgoing(payload)
                with _without_main():  # submit starts processes as they are needed
                    pending[pool.submit(_local_run, data)] = (index, data, 1)
            if not pending:
                return
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            broken: list[tuple[int, bytes, int]] = []
            for future in finished:
                index, data, attempts = pending.pop(future)
                try:
                    result, pid = future.result()
                except cf.process.BrokenProcessPool:
                    broken.append((index, data, attempts))
                    continue
                except Exception as exc:
                    raise EngineError(f"block {index} failed in a worker: {type(exc).__name__}: {exc}") from exc
                yield Done(index, pickle.loads(result), node, pid, attempts)
            if broken:
                # a dead worker breaks the whole pool: every block not yet finished runs again
                self.lost += 1
                broken += [pending.pop(f) for f in list(pending)]
                pool = self._restart()
                for index, data, attempts in broken:
                    if attempts > RETRIES:
                        raise EngineError(f"block {index} was lost with its worker {attempts} times; giving up "
                                          "(a worker that dies on every try usually ran out of memory)")
                    with _without_main():
                        pending[pool.submit(_local_run, data)] = (index, data, attempts + 1)

    def worker_pids(self) -> list[int]:
        """The live worker processes (for tests that stop one)."""
        if self._pool is None:
            return []
        return [p.pid for p in getattr(self._pool, "_processes", {}).values() if p.pid is not None]

    def start(self, spec: WorkerSpec) -> None:
        """Start the workers for ``spec`` now, not at the first block (timing without start-up)."""
        with _without_main():
            futures = [self._ensure(spec).submit(os.getpid) for _ in range(self.workers)]
        cf.wait(futures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._spec = None


# ---------------------------------------------------------------- Ray

def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ParameterError("a Ray cluster needs Ray: pip install 'secure-infer[cluster]'") from None
    return ray


def connect(address: str = "local", *, cpus: int | None = None, resources: dict[str, float] | None = None,
            namespace: str = "secure-infer", runtime_env: dict[str, Any] | None = None) -> Any:
    """Join the Ray cluster at ``address`` (``"local"``: start one here) unless joined already; returns ``ray``.

    A local Ray gets ``cpus`` logical CPUs (default: this machine's) and the
    custom ``resources`` (party labels, see :mod:`secure_infer.scoring`).
    """
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, "configure_logging": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    try:
        if address == "local":
            # address="local": a new Ray here, even when `ray start` left a cluster's address behind
            ray.init(address="local", num_cpus=cpus or os.cpu_count() or 1, resources=resources or None,
                     include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise EngineError(f"cannot join the Ray cluster at {address!r}: {exc}. Start it with `ray start --head` "
                          "and pass the address it prints") from None
    return ray


class _RayWorker:
    """One Ray actor: builds the spec's state once, then evaluates blocks (methods run one at a time)."""

    def __init__(self, spec_bytes: bytes, threads: int) -> None:
        _local_init(spec_bytes, threads)

    def run(self, payload_bytes: bytes) -> tuple[bytes, str, int]:
        import ray

        result, pid = _local_run(payload_bytes)
        return result, ray.get_runtime_context().get_node_id(), pid

    def where(self) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()


class RayEngine(Engine):
    """Ray actors, one per worker, on the cluster at ``address`` (``"local"``: a Ray started here).

    The spec goes into the object store once and every actor builds its state
    from it; a block is an actor call whose payload is put there by the
    client. An actor lost mid-block is restarted by Ray (on any node with room)
    and the block retried; results come back in completion order.
    """

    def __init__(self, address: str = "local", workers: int | None = None, *, threads: int = 1,
                 resources: dict[str, float] | None = None, namespace: str = "secure-infer",
                 runtime_env: dict[str, Any] | None = None) -> None:
        """``resources``: custom resources of a local Ray (e.g. party labels); ``runtime_env``: Ray's, for
        where workers import code from (``{"env_vars": {"PYTHONPATH": ...}}``)."""
        ray = connect(address, cpus=workers, resources=resources, namespace=namespace, runtime_env=runtime_env)
        self.address = address
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or cpus
        self.threads = threads
        self._actors: list[Any] = []
        self._spec: WorkerSpec | None = None
        self.spec_ref: Any = None
        self._pids: dict[int, int] = {}  # actor -> the process that last answered
        self.lost = 0  # actor processes lost so far (their blocks were retried)

    def _ensure(self, spec: WorkerSpec) -> list[Any]:
        if self._spec is spec and self._actors:
            return self._actors
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor)
        self.spec_ref = ray.put(outgoing(spec))  # once: every actor reads the same object
        cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=RETRIES)(_RayWorker)
        self._actors = [cls.options(scheduling_strategy="SPREAD").remote(self.spec_ref, self.threads)
                        for _ in range(self.workers)]
        self._pids = dict(enumerate(pid for _, pid in ray.get([a.where.remote() for a in self._actors])))
        self._spec = spec
        return self._actors

    def start(self, spec: WorkerSpec) -> None:
        """Create the actors for ``spec`` now and wait until each has built its state."""
        _ray().get([a.where.remote() for a in self._ensure(spec)])

    def placement(self) -> list[tuple[str, int]]:
        """Each actor's (node id, process id)."""
        ray = _ray()
        return list(ray.get([a.where.remote() for a in self._actors]))

    def run(self, spec: WorkerSpec, blocks: Iterable[tuple[int, Any]], *,
            in_flight: int | None = None) -> Iterator[Done]:
        ray = _ray()
        actors = self._ensure(spec)
        source = iter(blocks)
        idle = [w for _ in range(2) for w in range(len(actors))]  # two calls queued per actor: no idle gap
        pending: dict[Any, tuple[int, int, float]] = {}  # ref -> (block, actor, started)
        exhausted = False
        while True:
            while not exhausted and idle:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, payload = item
                worker = idle.pop(0)
                ref = actors[worker].run.remote(ray.put(outgoing(payload)))
                pending[ref] = (index, worker, time.perf_counter())
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, worker, _ = pending.pop(ref)
                idle.append(worker)
                try:
                    result, node, pid = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise EngineError(f"block {index}: its worker was lost more than {RETRIES} times: {exc}") from None
                except ray.exceptions.RayTaskError as exc:
                    raise EngineError(f"block {index} failed in a worker: {exc}") from None
                # Ray retries a lost actor's calls by itself: a new process id is how the client sees it
                # (marked on the first block the new process answers: one of the calls queued on that actor)
                restarted = self._pids.setdefault(worker, pid) != pid
                if restarted:
                    self._pids[worker] = pid
                    self.lost += 1
                yield Done(index, pickle.loads(result), node, pid, 2 if restarted else 1)

    def node_addresses(self) -> dict[str, str]:
        """Node id -> IP address of every live node."""
        return {n["NodeID"]: n["NodeManagerAddress"] for n in _ray().nodes() if n.get("Alive")}

    def close(self) -> None:
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._spec = None

    def shutdown(self) -> None:
        """Disconnect from the cluster (stops a local Ray)."""
        self.close()
        _ray().shutdown()
