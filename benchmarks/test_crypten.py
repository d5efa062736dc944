"""CrypTen: secure-infer's wrapper against raw CrypTen and plaintext, same run.

Groups (one per model and batch) hold: plaintext CPU, raw CrypTen (its own
``from_pytorch`` converter in the same party processes), ``wrap`` and
``wrap`` with the MPC rewrites. pytest-benchmark's table then reads directly as
overhead; bytes and rounds per party are in each benchmark's extra_info.

    python -m pytest benchmarks/test_crypten.py --benchmark-json=crypten.json

Models: the CrypTen benchmark's LeNet on 28x28 inputs (generated, timing only:
cost does not depend on pixel values) and the zoo LeNet on 8x8 digits, whose
accuracy with the rewrites (after fine-tuning) is recorded too.
"""

from __future__ import annotations

import pytest
import torch

import secure_infer as si
from secure_infer import rewrites, zoo
from secure_infer.backends.crypten import native_crypten

pytestmark = pytest.mark.multiprocess

ROUNDS = {1: 10, 64: 3}


def _record(benchmark, program) -> None:
    run = program.last_run
    benchmark.extra_info.update(
        bytes_per_party=run.per_party[0]["bytes"],
        bytes_total=run.bytes_sent,
        rounds=run.rounds,
        parties=len(run.per_party),
    )


@pytest.fixture(scope="module")
def mnist_lenet() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = zoo.build("lenet", (1, 28, 28), 10).eval()
    return model, si.datasets.mnist_shaped(64, seed=0).x_test


@pytest.fixture(scope="module")
def programs(mnist_lenet, digits, digits_lenet):
    """Party pools started once per module: (name, model key) -> program."""
    model28, x28 = mnist_lenet
    tuned = rewrites.rewrite_model(digits_lenet.model, digits.x_test[:1], ["maxpool-to-avgpool"]).model
    rewrites.fine_tune(tuned, digits)
    out = {
        ("raw-crypten", "lenet28"): native_crypten(model28, x28[:1]),
        ("secure-infer", "lenet28"): si.wrap(model28, "crypten", sample_input=x28[:1]),
        ("raw-crypten", "digits-lenet"): native_crypten(digits_lenet.model, digits.x_test[:1]),
        ("secure-infer", "digits-lenet"): si.wrap(digits_lenet.model, "crypten", sample_input=digits.x_test[:1]),
        ("secure-infer+rewrites", "digits-lenet"): si.wrap(tuned, "crypten", sample_input=digits.x_test[:1]),
    }
    out["accuracy"] = {
        "digits-lenet": digits_lenet.test_accuracy,
        "digits-lenet+maxpool-to-avgpool(fine-tuned)": zoo.accuracy(tuned, digits.x_test, digits.y_test),
    }
    yield out
    for key, program in out.items():
        if key != "accuracy":
            program.close()


def _inputs(key: str, mnist_lenet, digits) -> torch.Tensor:
    return mnist_lenet[1] if key == "lenet28" else digits.x_test


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("key", ["lenet28", "digits-lenet"])
def test_plaintext(benchmark, key, batch, mnist_lenet, digits, digits_lenet) -> None:
    model = mnist_lenet[0] if key == "lenet28" else digits_lenet.model
    x = _inputs(key, mnist_lenet, digits)[:batch]
    benchmark.group = f"crypten {key} b{batch}"
    with torch.no_grad():
        benchmark(model, x)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize(
    "name, key",
    [
        ("raw-crypten", "lenet28"),
        ("secure-infer", "lenet28"),
        ("raw-crypten", "digits-lenet"),
        ("secure-infer", "digits-lenet"),
        ("secure-infer+rewrites", "digits-lenet"),
    ],
)
def test_encrypted(benchmark, programs, name, key, batch, mnist_lenet, digits) -> None:
    program = programs[(name, key)]
    x = _inputs(key, mnist_lenet, digits)[:batch]
    benchmark.group = f"crypten {key} b{batch}"
    benchmark.extra_info["accuracy"] = programs["accuracy"]
    y = benchmark.pedantic(program, args=(x,), rounds=ROUNDS[batch], warmup_rounds=1)
    _record(benchmark, program if not hasattr(program, "program") else program.program)
    assert y.shape == (batch, 10)


@pytest.mark.parametrize("started_first", ["raw-crypten", "secure-infer"])
def test_wrapper_overhead_interleaved(benchmark, mnist_lenet, started_first: str) -> None:
    """The wrapper's overhead over raw CrypTen, calls interleaved so drift cancels.

    Which pool starts first measurably changes its speed on this machine (about
    10%), so both orders are run; the ratio is in extra_info.
    """
    import statistics
    import time

    model, x = mnist_lenet
    makers = {
        "raw-crypten": lambda: native_crypten(model, x[:1]),
        "secure-infer": lambda: si.wrap(model, "crypten", sample_input=x[:1]),
    }
    order = [started_first] + [k for k in makers if k != started_first]
    enc_holder = {}
    for key in order:
        enc_holder[key] = makers[key]()
    raw, wrapped = enc_holder["raw-crypten"], enc_holder["secure-infer"]
    benchmark.group = "crypten wrapper overhead (lenet28)"
    try:
        for batch, repeats in ((1, 10), (64, 4)):
            times: dict[str, list[float]] = {"raw": [], "wrap": []}
            raw(x[:batch])
            wrapped(x[:batch])
            for i in range(repeats):
                pair = [("raw", raw), ("wrap", wrapped)]
                for name, program in pair if i % 2 == 0 else pair[::-1]:
                    t0 = time.perf_counter()
                    program(x[:batch])
                    times[name].append(time.perf_counter() - t0)
            ratio = statistics.median(times["wrap"]) / statistics.median(times["raw"])
            benchmark.extra_info[f"b{batch}_raw_s"] = statistics.median(times["raw"])
            benchmark.extra_info[f"b{batch}_wrap_s"] = statistics.median(times["wrap"])
            benchmark.extra_info[f"b{batch}_ratio"] = ratio
        benchmark.pedantic(wrapped, args=(x[:1],), rounds=1, iterations=1)
    finally:
        raw.close()
        wrapped.close()


@pytest.fixture(scope="module")
def digits_vit(digits):
    return zoo.pretrained("vit", digits, seed=0)


@pytest.mark.parametrize("batch", [1, 64])
def test_tiny_vit_two_parties(benchmark, digits_vit, digits, batch: int) -> None:
    """The zoo's tiny Vision Transformer (hand-written attention, LayerNorm, GELU) under 2 real parties."""
    x = digits.x_test[:batch]
    benchmark.group = f"crypten vit b{batch}"
    with si.wrap(digits_vit.model, "crypten", sample_input=x[:1], parties=2) as enc:
        y = benchmark.pedantic(enc, args=(x,), kwargs={"compare": True}, rounds=3, warmup_rounds=1)
        run = enc.last_run
        plain = digits_vit.model(x).detach()
        benchmark.extra_info.update(
            bytes_sent=run.bytes_sent, rounds=run.rounds, max_abs_error=run.max_abs_error,
            argmax_agreement=float((y.argmax(1) == plain.argmax(1)).float().mean()),
            approximated=[c.layer for c in enc.report().conversions if c.kind == "approximated"],
        )
