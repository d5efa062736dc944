"""Federated runs on Flower's simulation engine: survivors averaged, drop-outs reported, DP accounted.

Each run starts Ray (about 15-20 s on 2 cores), so runs are few and tiny: 4-5
clients, 2 rounds. Every aggregate is checked against :func:`replay_fedavg`,
which reruns the round's clients outside the protocol: an aggregate that
counted a dropped client as zeros, or missed FedProx's term, would differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_infer._errors import ParameterError
from secure_infer.datasets import load_digits
from secure_infer.federated.training import (
    DPSettings,
    FederatedConfig,
    FederatedResult,
    dp_epsilon,
    replay_fedavg,
    run_federated,
)

pytest.importorskip("flwr")
RUNS = [pytest.mark.slow, pytest.mark.multiprocess]

DATA = load_digits()
SMALL = dict(clients=4, rounds=2, local_epochs=1, batch_size=32, min_clients=2)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _check_rounds_match_replay(result: FederatedResult, tolerance: float) -> None:
    for rnd in range(1, len(result.rounds) + 1):
        assert _max_diff(result.history[rnd], replay_fedavg(result, DATA, rnd)) < tolerance


@RUNS[0]
@RUNS[1]
def test_fedavg_averages_the_survivors_and_reports_the_dropped_client() -> None:
    seen = []
    result = run_federated(FederatedConfig(label="plain", drop=((2, 1),), **SMALL), DATA, on_round=seen.append)
    assert [r.round for r in seen] == [1, 2]
    assert result.rounds[0].aggregated == [0, 1, 2, 3] and result.rounds[0].dropped == []
    assert result.rounds[1].aggregated == [0, 2, 3]
    assert result.rounds[1].dropped == ["client 1 dropped out of round 2 (scheduled)"]
    _check_rounds_match_replay(result, 1e-5)
    assert result.rounds[1].upload_bytes > 0 and result.rounds[1].download_bytes > 0
    assert result.accuracy > result.initial_accuracy


@RUNS[0]
@RUNS[1]
def test_secagg_plus_gives_the_plain_average_and_survives_a_drop_out() -> None:
    result = run_federated(FederatedConfig(label="secagg", aggregation="secagg+", clients=5, rounds=2,
                                           local_epochs=1, batch_size=32, drop=((2, 4),)), DATA)
    assert result.rounds[1].aggregated == [0, 1, 2, 3]
    assert any("client 4" in d for d in result.rounds[1].dropped)
    _check_rounds_match_replay(result, 1e-3)  # SecAgg+ quantizes to 2**22 levels over [-8, 8]


@RUNS[0]
@RUNS[1]
def test_dp_fedprox_clips_noises_and_accounts_epsilon_every_round() -> None:
    dp = DPSettings(noise_multiplier=1.5, clipping_norm=0.5)
    result = run_federated(FederatedConfig(label="dp", strategy="fedprox", proximal_mu=0.5, dp=dp, **SMALL), DATA)
    eps = [r.epsilon for r in result.rounds]
    assert eps == pytest.approx([dp_epsilon(1.5, 1.0, r, dp.delta) for r in (1, 2)])
    assert eps[0] is not None and eps[1] is not None and 0 < eps[0] < eps[1]
    # the noised aggregate is not the clipped average (noise std 1.5 * 0.5 / 4 per weight)
    replayed = replay_fedavg(result, DATA, 1)
    assert _max_diff(result.history[1], replayed) > 0.05


@RUNS[0]
@RUNS[1]
def test_crypten_aggregators_equal_plaintext_fedavg_and_report_their_cost() -> None:
    result = run_federated(FederatedConfig(label="crypten", aggregation="crypten", drop=((2, 0),), **SMALL), DATA)
    _check_rounds_match_replay(result, 1e-3)
    assert result.rounds[1].aggregated == [1, 2, 3]
    assert any("client 0" in d for d in result.rounds[1].dropped)
    cost = result.rounds[0].aggregation
    assert cost["bytes_per_party"] > 0 and cost["seconds"] > 0 and cost["upload_bytes"] > 0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"strategy": "fedsgd"}, "strategy must be one of"),
    ({"aggregation": "he"}, "aggregation must be one of"),
    ({"aggregation": "crypten", "aggregators": 4}, "aggregators must be 2 or 3"),
    ({"drop": ((9, 0),)}, "outside rounds"),
    ({"fraction": 0.0}, "fraction must be in"),
])
def test_bad_configs_are_refused_before_anything_starts(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ParameterError, match=needle):
        FederatedConfig(**{**SMALL, **kwargs})  # type: ignore[arg-type]
