"""The work engine: blocks split, run on spawned workers (or Ray), retried when a worker is lost."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest

import secure_infer as si
from secure_infer.engine import LocalEngine, audit_outgoing, outgoing, split


@dataclass(frozen=True)
class Doubler:
    """A worker spec for tests: state built once per worker; can die once, or fail, on a given block."""

    offset: int
    die_on: int = -1
    fail_on: int = -1
    marker: str = ""

    def build(self) -> dict:
        return {"offset": self.offset, "pid": os.getpid()}

    def run(self, state: dict, payload: tuple[int, int]) -> tuple[int, int]:
        index, value = payload
        if index == self.die_on and not Path(self.marker).exists():
            Path(self.marker).write_text("died once")
            os._exit(7)  # the worker process is lost mid-block
        if index == self.fail_on:
            raise ValueError(f"bad block {index}")
        return 2 * value + state["offset"], state["pid"]


def test_split_covers_every_index_once_in_order() -> None:
    assert split(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert split(8, 4) == [range(0, 4), range(4, 8)]
    assert split(0, 4) == []
    assert [i for r in split(1001, 37) for i in r] == list(range(1001))
    with pytest.raises(si.ParameterError, match="block size"):
        split(5, 0)


def test_local_engine_runs_blocks_in_spawned_workers_built_once() -> None:
    spec = Doubler(offset=1)
    with LocalEngine(2) as engine:
        done = list(engine.run(spec, ((i, (i, i)) for i in range(8))))
        again = list(engine.run(spec, [(0, (0, 5))]))  # the same spec: the same workers
    assert sorted(d.index for d in done) == list(range(8))
    assert {d.index: d.result[0] for d in done} == {i: 2 * i + 1 for i in range(8)}
    pids = {d.result[1] for d in done}
    assert os.getpid() not in pids and len(pids) <= 2
    assert again[0].result[1] in pids


@pytest.mark.slow
def test_a_lost_worker_costs_time_not_answers(tmp_path: Path) -> None:
    spec = Doubler(offset=0, die_on=3, marker=str(tmp_path / "died"))
    with LocalEngine(2) as engine:
        done = list(engine.run(spec, ((i, (i, 10 * i)) for i in range(6))))
        assert engine.lost == 1
    assert (tmp_path / "died").exists()
    assert {d.index: d.result[0] for d in done} == {i: 20 * i for i in range(6)}
    assert next(d for d in done if d.index == 3).attempts == 2


def test_a_block_that_fails_by_itself_raises_at_once() -> None:
    with LocalEngine(1) as engine, pytest.raises(si.EngineError, match="block 2 failed.*bad block 2"):
        list(engine.run(Doubler(offset=0, fail_on=2), ((i, (i, i)) for i in range(4))))


def test_everything_sent_to_workers_passes_the_audit_hook() -> None:
    seen: list[bytes] = []
    with audit_outgoing(seen.append), LocalEngine(1) as engine:
        list(engine.run(Doubler(offset=3), [(0, (0, 123456789))]))
    assert any(pickle.loads(b) == Doubler(offset=3) for b in seen)
    assert any(pickle.loads(b) == (0, 123456789) for b in seen)
    outgoing("after the block")  # the hook is gone
    assert len(seen) == 2


def test_local_engine_refuses_bad_worker_counts() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(si.ParameterError, match="positive integer"):
            LocalEngine(bad)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ray_engine_runs_the_same_blocks_on_local_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from secure_infer.engine import RayEngine

    # Ray's workers import the spec's class from this folder
    engine = RayEngine("local", 2, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    try:
        spec = Doubler(offset=0, die_on=2, marker=str(tmp_path / "died"))
        done = list(engine.run(spec, ((i, (i, i)) for i in range(5))))
        assert {d.index: d.result[0] for d in done} == {i: 2 * i for i in range(5)}
        assert (tmp_path / "died").exists()  # the actor died mid-block; Ray restarted it and retried
        # Ray retries by itself: the client sees a new process answer for that actor (one of its queued blocks)
        assert engine.lost == 1 and sum(d.attempts > 1 for d in done) == 1
        assert len({d.node for d in done}) == 1 and len(engine.placement()) == 2
    finally:
        engine.shutdown()
