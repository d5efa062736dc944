"""HE query round trip: gRPC with TLS and a token against the legacy frame protocol over plain TCP.

    python -m pytest benchmarks/test_transport.py --benchmark-json=transport.json -s

Target (issue 14): on loopback, for the reference network, the round trip over
gRPC + TLS is within 1.10x of the plain-TCP frame protocol's, both measured in
the same run. The two servers share one compiled program and handler; the
client alternates between them query by query so machine load hits both
alike, and the medians are compared. The round trip includes sending,
the server's evaluation and receiving, (de)serialization included, as
:class:`protocols.he.QueryStats.round_trip_s` defines it; the transport's own
share (round trip minus the server's evaluation time) is reported beside it.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import pytest
import torch

import secure_infer as si
from protocols.he import ClientTLS, FrameServer, HEClient, HEServer, ServerState, ServerTLS
from secure_infer import zoo
from secure_infer.certs import make_pki

QUERIES = 30


@pytest.fixture(scope="module")
def servers():
    torch.manual_seed(0)
    model = zoo.build("cryptonets", (1, 28, 28), 10).eval()
    x = si.datasets.mnist_shaped(512, seed=0).x_test
    pki = Path(tempfile.mkdtemp(prefix="si-bench-pki-"))
    make_pki(pki, clients=["bench"])
    state = ServerState(pki / "state.db")
    token = state.add_client("bench")
    grpc_server = HEServer.from_model(model, x[:1], calibration=x[:256], name="reference28",
                                      tls=ServerTLS(pki / "server.pem", pki / "server.key"), state=state)
    frames = FrameServer(grpc_server.handler).start()
    yield model, x, grpc_server, frames, ClientTLS(pki / "ca.pem"), token
    frames.close()
    grpc_server.close()
    state.close()


def test_grpc_tls_round_trip_within_10_percent_of_plain_tcp(benchmark, servers) -> None:
    model, x, grpc_server, frames, tls, token = servers
    benchmark.group = "HE transport: reference28 one image, latency mode"
    timings: dict[str, list[float]] = {"grpc+tls": [], "frames": []}
    compute: dict[str, list[float]] = {"grpc+tls": [], "frames": []}
    with HEClient(grpc_server.address, tls=tls, token=token) as secure, \
            HEClient(frames.address, transport="frames") as plain:
        for client in (secure, plain):  # warm both: first-query allocations
            client.predict(x[:1])
        for i in range(QUERIES):
            xi = x[i + 1 : i + 2]
            for name, client in (("grpc+tls", secure), ("frames", plain)) if i % 2 == 0 else \
                    (("frames", plain), ("grpc+tls", secure)):
                y = client.predict(xi, epilogue=False)
                with torch.no_grad():
                    assert int(y.argmax()) == int(model(xi).argmax())
                stats = client.last_query
                assert stats is not None
                timings[name].append(stats.round_trip_s)
                compute[name].append(stats.server_compute_s)
        benchmark.pedantic(lambda: secure.predict(x[:1]), rounds=5, iterations=1)
    med = {k: statistics.median(v) for k, v in timings.items()}
    transport = {k: statistics.median(a - b for a, b in zip(timings[k], compute[k], strict=True)) for k in timings}
    ratio = med["grpc+tls"] / med["frames"]
    benchmark.extra_info.update({
        "queries_each": QUERIES, "median_round_trip_s": med, "median_transport_share_s": transport,
        "ratio_grpc_tls_over_frames": ratio,
    })
    print(f"\nround trip median: gRPC+TLS {med['grpc+tls'] * 1e3:.1f} ms, frames/TCP {med['frames'] * 1e3:.1f} ms, "
          f"ratio {ratio:.3f}; transport share {transport['grpc+tls'] * 1e3:.1f} ms vs {transport['frames'] * 1e3:.1f} ms")
    assert ratio <= 1.10, f"gRPC+TLS round trip is {ratio:.3f}x the plain-TCP one (target <= 1.10x)"
