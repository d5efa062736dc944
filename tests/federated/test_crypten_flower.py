"""The aggregators' own process: the Flower server side holds public keys and sealed bytes only."""

from __future__ import annotations

import numpy as np
import pytest

from secure_infer._errors import ProtocolError
from secure_infer.federated.crypten_aggregation import share_update
from secure_infer.federated.crypten_flower import AggregatorProcess, SealingClient

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_the_aggregator_process_averages_refuses_a_replayed_round_and_exits_on_close() -> None:
    rng = np.random.default_rng(0)
    updates = {c: [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
               for c in range(3)}
    weights = {0: 10.0, 1: 30.0, 2: 60.0}
    service = AggregatorProcess(2, min_clients=2, timeout=120.0)
    try:
        assert service._proc.pid is not None and service._proc.poll() is None
        assert not any(hasattr(service, name) for name in ("_private", "private_keys"))
        sealed = {str(c): share_update(u, weights[c], service.keys, client=str(c), round=1)
                  for c, u in updates.items()}
        out = service.aggregate(sealed, round=1)
        expected = [sum(weights[c] * updates[c][i] for c in updates) / 100.0 for i in range(2)]
        for got, want in zip(out.arrays, expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)
        with pytest.raises(ProtocolError) as refused:  # the server may not re-run a round over fewer clients
            service.aggregate({k: v for k, v in sealed.items() if k != "0"}, round=1)
        assert refused.value.code == "round-replayed"
    finally:
        service.close()
    assert service._proc.returncode is not None


def test_a_client_seals_to_the_keys_in_its_fit_config() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    publics = [X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
               for _ in range(3)]
    config = {"round": 4, **{f"secure-infer.aggregator-key-{i}": p for i, p in enumerate(publics)}}
    weights = [np.ones((2, 2), np.float32)]
    sealed = SealingClient(3).seal(weights, 5.0, config, client=7)
    assert len(sealed) == 3 and all(s.dtype == np.uint8 for s in sealed)
    raw = b"".join(s.tobytes() for s in sealed)
    assert np.float32(1.0).tobytes() not in raw and np.float64(5.0).tobytes() not in raw


def test_an_aggregator_process_that_dies_at_start_up_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import time

    from secure_infer._errors import ParameterError, PartyFailure

    with pytest.raises(ParameterError, match="at least 2 aggregator parties"):
        AggregatorProcess(1)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a child that exits at once, code 1
    started = time.monotonic()
    with pytest.raises(PartyFailure, match="exited with code 1 before it was ready"):
        AggregatorProcess(2, timeout=60.0)
    assert time.monotonic() - started < 30
