"""Run one corpus model through one backend, the way a new user would: wrap, call, compare.

Shared by ``test_corpus.py`` (CI) and ``coverage.py`` (which writes
``docs/model-coverage.md``). Each model gets quickly trained weights (a few
epochs on its data, so logits have real margins), then:

* CrypTen: ``wrap`` and argmax agreement with plaintext on ``CRYPTEN_INPUTS``
  test inputs (``parties=1``, the in-process simulation, in CI; real parties
  in the coverage run: the arithmetic is the same);
* TenSEAL: the model is compiled (front end, rules, every activation fitted
  on the interval its input can reach, CKKS parameters and keys), calibrated
  on training inputs. Argmax agreement on ``TENSEAL_INPUTS`` test inputs is
  measured on the compiled CKKS program computed in float64 (the same
  polynomials and weights: the HE arithmetic without its noise). When one
  batch costs at most ``he_budget`` ciphertext multiplications (counted from
  the compiled program), the same inputs also run under real encryption
  (batch mode, one SIMD batch) and that agreement is recorded; costlier
  programs (minutes per batch on 2 cores) run ``latency_inputs`` inputs
  encrypted in latency mode instead.

An outcome is ``converts`` (with agreement, max error), ``unsupported`` (a
clear :class:`secure_infer.UnsupportedModelError`) or ``error`` (anything
else: always a bug).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field

import torch
from corpus import ENTRIES, Entry

import secure_infer as si

CRYPTEN_INPUTS = 16
TENSEAL_INPUTS = 256
CALIBRATION = 512
BACKENDS = ("crypten", "tenseal")


@dataclass
class Outcome:
    """What happened to one model under one backend."""

    model: str
    backend: str
    status: str  # converts | unsupported | error
    agreement: float | None = None
    max_error: float | None = None
    worst_case: float | None = None
    inputs: int = 0
    seconds: float = 0.0
    message: str = ""
    approximated: list[str] = field(default_factory=list)
    encrypted_inputs: int = 0  # inputs that ran under real encryption
    encrypted_agreement: float | None = None  # their argmax agreement with plaintext
    encrypted_error: float | None = None  # their max error against plaintext
    # the largest plaintext top-2 margin among inputs whose argmax moved (None: none moved); each logit off by at
    # most max_error can only move an argmax whose margin is at most twice that: a near-tie, not a wrong conversion
    flip_margin: float | None = None
    depth: int | None = None
    ring: int | None = None


_DATA: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) for a corpus data kind; generated kinds are seeded."""
    if kind in _DATA:
        return _DATA[kind]
    if kind.startswith("digits"):
        d = si.datasets.load_digits(seed=0)
        shape = {"digits": (1, 8, 8), "digits-flat": (64,), "digits-seq": (8, 8)}[kind]
        out = (d.x_train.reshape(-1, *shape), d.y_train, d.x_test.reshape(-1, *shape), d.y_test)
    elif kind == "audio":  # a tone of one of 10 frequencies, random phase, noise: the class is the pitch
        g = torch.Generator().manual_seed(0)
        n = 1600
        y = torch.randint(0, 10, (n,), generator=g)
        t = torch.arange(64).float()
        phase = torch.rand(n, 1, generator=g) * 2 * math.pi
        x = torch.sin(2 * math.pi * (y[:, None].float() + 2) * t / 64 + phase) * 0.8
        x = (x + 0.1 * torch.randn(n, 64, generator=g)).clamp(-1, 1).reshape(n, 1, 64)
        out = (x[:1200], y[:1200], x[1200:], y[1200:])
    elif kind == "tokens":  # 16 tokens from a vocabulary of 32; the class is how many tokens are below 16, mod 10
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 32, (1600, 16), generator=g)
        y = (x < 16).sum(1) % 10
        out = (x[:1200], y[:1200], x[1200:], y[1200:])
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    _DATA[kind] = out
    return out


def trained(entry: Entry, epochs: int = 8) -> torch.nn.Module:
    """The entry's model, seeded, trained a few epochs (BatchNorm statistics and logit margins become real)."""
    torch.manual_seed(0)
    model = entry.build()
    x, y, _, _ = data(entry.data)
    model.train()
    with torch.no_grad():
        probe = model(x[:4])
    if not probe.is_floating_point():  # an argmax head cannot be trained: random weights
        return model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            out = model(x[idx])
            loss = torch.nn.functional.cross_entropy(out.reshape(len(idx), -1), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _compare(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float | None]:
    if not want.is_floating_point():
        return float((got == want).float().mean()), None
    agreement = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return agreement, float((got - want).abs().max())


def _flip_margin(got: torch.Tensor, want: torch.Tensor) -> float | None:
    if not want.is_floating_point():
        return None
    moved = got.argmax(-1) != want.argmax(-1)
    if not bool(moved.any()):
        return None
    top = want.reshape(len(want), -1).topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1])[moved.reshape(len(want))].max())


def run(entry: Entry, backend: str, *, real_parties: bool = False, he_budget: int = 600,
        latency_inputs: int = 0) -> Outcome:
    """Convert ``entry`` for ``backend`` and measure it; never raises."""
    started = time.perf_counter()
    outcome = Outcome(entry.name, backend, "error")
    try:
        model = trained(entry)
        x_train, _, x_test, _ = data(entry.data)
        x = x_test[: CRYPTEN_INPUTS if backend == "crypten" else TENSEAL_INPUTS]
        with torch.no_grad():
            want = model(x)
        if backend == "crypten":
            with si.wrap(model, "crypten", sample_input=x[:1], parties=2 if real_parties else 1) as enc:
                got = enc(x)
                outcome.approximated = [c.layer for c in enc.report().conversions if c.kind == "approximated"]
            outcome.agreement, outcome.max_error = _compare(got, want)
            outcome.flip_margin = _flip_margin(got, want)
            outcome.inputs = outcome.encrypted_inputs = len(x)
            outcome.encrypted_agreement, outcome.encrypted_error = outcome.agreement, outcome.max_error
        else:
            _tenseal(model, x, x_train, want, outcome, he_budget, latency_inputs)
        outcome.status = "converts"
    except si.UnsupportedModelError as exc:
        outcome.status, outcome.message = "unsupported", str(exc)
    except Exception as exc:  # noqa: BLE001 - any other exception is what the corpus exists to catch
        outcome.message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    outcome.seconds = time.perf_counter() - started
    return outcome


def batch_multiplications(program: object) -> int:
    """Ciphertext-ciphertext multiplications one batch-mode evaluation of ``program`` does."""
    from secure_infer.backends.tenseal._compile import PolyStage
    from secure_infer.backends.tenseal._poly import Chebyshev, DepthArithmetic

    class Count(DepthArithmetic):
        products = 0

        def mul(self, a: int, b: int) -> int:
            Count.products += 1
            return super().mul(a, b)

        def product_minus(self, a: int, b: int, c: int | None) -> int:
            Count.products += 1
            return super().product_minus(a, b, c)

    total = 0
    for stage in program.compiled.stages:  # type: ignore[attr-defined]
        if isinstance(stage, PolyStage):
            Count.products = 0
            if stage.fit is not None:
                Chebyshev(stage.degree).evaluate(Count(), 0, [0.0] * (stage.degree + 1))
            total += stage.size * (Count.products if stage.fit is not None else max(stage.degree - 1, 1))
    return total


def _tenseal(model: torch.nn.Module, x: torch.Tensor, x_train: torch.Tensor, want: torch.Tensor, outcome: Outcome,
             he_budget: int, latency_inputs: int) -> None:
    from secure_infer.backends import get_backend
    from secure_infer.graph import trace

    graph = trace(model, x[:1])
    backend = get_backend("tenseal")
    calibration = x_train[:CALIBRATION]
    program = backend.compile(graph, x[:1], mode="batch", calibration=calibration)
    prepared = graph.prepare(x)
    try:
        flat = program.compiled.run_plain(prepared.double().reshape(len(x), -1).numpy())
        core = torch.from_numpy(flat).float().reshape(len(x), *graph.output.feature_shape)
        outcome.agreement, outcome.max_error = _compare(graph.finish(core), want)
        outcome.inputs = len(x)
        outcome.worst_case = program.compiled.error_bound
        outcome.approximated = [c.layer for c in program.conversions if c.kind == "approximated"]
        outcome.depth, outcome.ring = program.params.depth, program.params.poly_modulus_degree
        if batch_multiplications(program) <= he_budget:
            few = prepared
        elif latency_inputs:
            program.close()
            program = backend.compile(graph, x[:1], mode="latency", calibration=calibration)
            few = prepared[:latency_inputs]
        else:
            return
        got = graph.finish(program(few))
        outcome.encrypted_inputs = len(few)
        outcome.encrypted_agreement, outcome.encrypted_error = _compare(got, want[: len(few)])
    finally:
        program.close()


def entries() -> list[Entry]:
    return list(ENTRIES)
