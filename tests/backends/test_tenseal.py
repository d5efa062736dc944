"""TenSEAL (CKKS) backend: agreement with plaintext, both packings, parameters, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer import zoo
from secure_infer.anchors import TutorialConvNet
from secure_infer.backends.tenseal._client import Layout
from secure_infer.backends.tenseal._execute import pack_latency
from secure_infer.backends.tenseal._params import CKKSParameters, choose, max_bits_128

pytestmark = pytest.mark.timeout(600)


def _square_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), zoo.Square(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8, 4), zoo.Square(), nn.Linear(4, 3),
    ).eval()


# (id, model factory, input shape, tolerance in latency mode)
CASES = [
    ("linear", lambda: nn.Linear(6, 4), (6,), 1e-3),
    ("wide-linear-3000", lambda: nn.Linear(3000, 3), (3000,), 5e-3),
    ("conv-stride-pad-channels", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten()), (2, 7, 7), 1e-3),
    ("two-convs-deep", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), zoo.Square(), nn.Conv2d(2, 2, 3, padding=1), nn.Flatten()), (1, 6, 6), 1e-2),
    ("avgpool-adaptive", lambda: nn.Sequential(nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (2, 4, 4), 1e-3),
    ("batchnorm-folded", lambda: nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), (5,), 1e-3),
    ("square-cnn", _square_net, (1, 8, 8), 1e-2),
]


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0], marks=[pytest.mark.slow] if c[0] == "wide-linear-3000" else [])
                                  for c in CASES])
def test_exact_layers_agree_in_both_modes(case) -> None:
    _, make, shape, tol = case
    torch.manual_seed(1)
    model = _init(make())
    x = torch.rand(3, *shape)
    plain = model(x).detach()
    results = {}
    for mode in ("latency", "batch"):
        enc = si.wrap(model, "tenseal", sample_input=x[:1], mode=mode, calibration=x)
        results[mode] = enc(x, compare=True)
        assert results[mode].shape == plain.shape
        assert enc.last_run.max_abs_error <= tol, (mode, enc.last_run.max_abs_error)
    assert torch.allclose(results["latency"], results["batch"], atol=2 * tol)


def test_square_cnn_on_digits_both_modes(trained_zoo, digits) -> None:
    z = trained_zoo["cryptonets"]
    x = digits.x_test[:40]
    outs = {}
    for mode in ("latency", "batch"):
        enc = si.wrap(z.model, "tenseal", sample_input=x[:1], mode=mode, calibration=digits.x_train[:200])
        outs[mode] = enc(x if mode == "batch" else x[:8])
        run = enc.last_run
        # batch mode runs the square chain: each affine layer shares its square's rescale
        assert run.extra["depth_used"] == (5 if mode == "latency" else 2)
        assert run.encrypt_s > 0 and run.compute_s > 0 and run.decrypt_s > 0
        assert run.extra["ciphertext_bytes_in"] > 0 and run.extra["public_key_material_bytes"] > 0
    plain = z.model(x).detach()
    assert torch.equal(outs["batch"].argmax(1), plain.argmax(1))
    assert float((outs["batch"] - plain).abs().max()) < 0.1
    # The first prime is sized for the worst case over the whole input range, which
    # leaves 26-bit scales at N=8192: logits (up to ~90) come back within ~0.03.
    assert float((outs["latency"] - plain[:8]).abs().max()) < 0.1
    assert torch.allclose(outs["latency"], outs["batch"][:8], atol=0.1)


@pytest.mark.slow
def test_relu_is_replaced_and_reported(trained_zoo, digits) -> None:
    z = trained_zoo["mlp"]
    enc = si.wrap(z.model, "tenseal", sample_input=digits.x_test[:1], mode="batch", calibration=digits.x_train,
                  poly_degree=15)  # a low degree keeps this test fast; the default is chosen by tolerance
    report = enc.report()
    relu = [c for c in report.conversions if c.layer == "ReLU"]
    assert relu and relu[0].kind == "approximated" and relu[0].max_abs_error is not None
    assert "degree-15 Chebyshev" in relu[0].detail and relu[0].bound >= relu[0].max_abs_error
    assert "worst-case output error" in str(report)
    ev = enc.evaluate(digits.x_test, digits.y_test, batch_size=4096)
    assert ev.agreement >= 0.99
    assert ev.max_abs_error <= enc.program.worst_case_error  # the bound holds on real data too


def test_latency_mode_makes_only_the_rotation_keys_it_uses(trained_zoo, digits) -> None:
    enc = si.wrap(trained_zoo["cryptonets"].model, "tenseal", sample_input=digits.x_test[:1])
    steps = enc.program.server.public.rotation_steps
    assert steps and all(s & (s - 1) == 0 for s in steps)  # powers of two only
    assert len(steps) < 12  # TenSEAL's generate_galois_keys() makes 2*log2(N/2) = 24
    layout = enc.program.layout()
    assert "weight" not in " ".join(layout) and layout["input_shape"] == [1, 8, 8]
    assert Layout.from_json(layout) == enc.program.published  # the client rebuilds it from JSON alone


def test_the_server_side_has_no_secret_key(trained_zoo, digits, secret_key_material) -> None:
    enc = si.wrap(trained_zoo["logreg"].model, "tenseal", sample_input=digits.x_test[:1])
    enc(digits.x_test[:2])  # a query has run: the server holds evaluation keys and has seen ciphertexts
    server = enc.program.server
    found, visited = secret_key_material(server)
    assert found == [] and visited > 10
    assert secret_key_material(enc.program.client)[0]  # the walk does find the client's key (not vacuous)
    assert set(server.public.sizes()) <= {"relin_keys", "galois_keys"}  # no public key: the server never encrypts


def test_key_material_and_inputs_travel_seeded(trained_zoo, digits) -> None:
    """Seeded keys and symmetric seeded ciphertexts: about half the bytes of their expanded forms."""
    from secure_infer.backends.tenseal._seal import serialized_size

    enc = si.wrap(trained_zoo["cryptonets"].model, "tenseal", sample_input=digits.x_test[:1])
    public, keys = enc.program.server.public, enc.program.client.keys
    for name, obj in (("relin_keys", public.relin_keys), ("galois_keys", public.galois_keys)):
        assert public.sizes()[name] < 0.6 * serialized_size(obj)
    enc(digits.x_test[:1])
    fresh = keys.encrypt(np.zeros(keys.params.slots))
    sent, count = enc.last_run.extra["ciphertext_bytes_in"], enc.last_run.extra["ciphertexts_in"]
    assert count == enc.program.plan.chunks  # one per tap group in the tap packing
    assert sent == pytest.approx(count * keys.wire_size(), rel=0.01)  # compression varies by a few bytes
    assert sent < 0.6 * count * serialized_size(fresh)


def test_parameters_are_128_bit_secure() -> None:
    for depth in (1, 3, 5, 8):
        params = choose(depth, max_abs_output=30.0, slots_needed=1024)
        assert params.total_bits <= max_bits_128(params.poly_modulus_degree)
        assert params.depth == depth
    with pytest.raises(si.ParameterError, match="128-bit"):
        CKKSParameters(8192, (60, 40, 40, 40, 60), 40).validate()
    with pytest.raises(si.ParameterError, match="128-bit"):
        si.wrap(nn.Linear(4, 2), "tenseal", sample_input=torch.rand(1, 4),
                poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 40, 60])


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2)), "average pooling"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)), "Softmax.*client"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "LayerNorm.*BatchNorm"),
        (nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4)), "GroupNorm"),
    ],
)
def test_unsupported_layers_suggest_what_to_do(model: nn.Module, match: str) -> None:
    shape = (1, 4) if isinstance(model[0], nn.Linear) else (1, 1, 6, 6)
    report = si.check(model, "tenseal", sample_input=torch.rand(*shape))
    assert not report.ok
    with pytest.raises(si.UnsupportedModelError, match=match):
        si.wrap(model, "tenseal", sample_input=torch.rand(*shape))


def test_products_of_two_encrypted_values_are_refused_clearly() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) * torch.tanh(self.b(x))

    with pytest.raises(si.UnsupportedModelError, match="two encrypted values.*crypten"):
        si.wrap(Gate(), "tenseal", sample_input=torch.rand(1, 4))


def test_bad_inputs_are_clear() -> None:
    model = nn.Linear(4, 2).eval()
    enc = si.wrap(model, "tenseal", sample_input=torch.rand(1, 4), calibration=torch.rand(8, 4))
    with pytest.raises(si.ParameterError, match=r"\(batch, 4\)"):
        enc(torch.rand(2, 5))
    with pytest.raises(si.ParameterError, match="float"):
        enc(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(si.ParameterError, match="calibrated range"):
        enc(torch.full((1, 4), 100.0))
    with pytest.raises(si.ParameterError, match="mode"):
        si.wrap(model, "tenseal", sample_input=torch.rand(1, 4), mode="fast")


def test_overflow_is_detected_before_garbage() -> None:
    """Parameters too small for the worst-case output are refused at wrap time."""
    model = nn.Linear(4, 1).eval()
    with torch.no_grad():
        model.weight.fill_(1000.0)
    x = torch.full((1, 4), 1.0)
    with pytest.raises(si.ParameterError, match="garbage"):
        si.wrap(model, "tenseal", sample_input=x, poly_modulus_degree=8192,
                coeff_mod_bit_sizes=[30, 26, 30], scale_bits=26)
    # chosen automatically, the first prime holds the worst case
    enc = si.wrap(model, "tenseal", sample_input=x)
    y = enc(torch.full((1, 4), 1.0), compare=True)
    assert enc.last_run.max_abs_error < 1e-1 * abs(float(y))


@pytest.mark.slow
def test_input_wider_than_any_ring_is_split_across_ciphertexts() -> None:
    """20,000 inputs exceed the 16,384 slots of the largest ring: latency mode splits them, not refuses."""
    torch.manual_seed(0)
    model = nn.Linear(20000, 2).eval()
    x = torch.rand(2, 20000)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    layout = enc.program.published
    assert layout.chunks == 10 and layout.period == layout.slots == 2048  # N=4096, chosen by depth alone
    assert Layout.from_json(layout.to_json()) == layout
    with torch.no_grad():
        assert float((enc(x) - model(x)).abs().max()) < 1e-3
    assert enc.last_run.extra["ciphertexts_in"] == 2 * 10


def test_a_wide_first_layer_no_longer_forces_a_larger_ring() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6000, 8), zoo.Square(), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 6000) * 0.1
    enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    # depth 3 needs N=8192 (4096 slots); the 6000-wide input takes 2 ciphertexts instead of N=16384
    assert enc.program.params.poly_modulus_degree == 8192 and enc.program.published.chunks == 2
    with torch.no_grad():
        assert float((enc(x) - model(x)).abs().max()) < 1e-2


def test_blocked_packing_places_each_value_once_per_block() -> None:
    x = np.arange(1, 11, dtype=float)  # 10 values, padded to period 16
    (packed,) = pack_latency(x, 16, 64, block=8, width=4)
    # span 16*8/4 = 32 slots: block t repeats values 4t..4t+3; the span repeats across the ciphertext
    assert list(packed[:8]) == [1, 2, 3, 4] * 2
    assert list(packed[8:16]) == [5, 6, 7, 8] * 2
    assert list(packed[16:24]) == [9, 10, 0, 0] * 2
    assert not packed[24:32].any()
    assert np.array_equal(packed[:32], packed[32:])
    # block = width = period is the periodic packing
    assert np.array_equal(pack_latency(x, 16, 64, block=16, width=16)[0], pack_latency(x, 16, 64)[0])


def test_the_first_layer_reads_a_cheaper_packing_and_agrees() -> None:
    """A narrow input in a wide ciphertext is packed in blocks: fewer diagonals than outputs, same answers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 64), zoo.Square(), nn.Linear(64, 5)).eval()
    x = torch.rand(4, 100)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency", packing="dense")
    layout = enc.program.published
    assert layout.block == 64 and 0 < layout.width < 64 and not layout.gather
    first = enc.program.plan.affine[0][0]
    assert sum(len(b) for b in first.blocks) <= layout.width  # diagonals: the periodic packing needs 64
    assert Layout.from_json(layout.to_json()) == layout
    with torch.no_grad():
        assert float((enc(x) - model(x)).abs().max()) < 1e-2
    bad = dict(layout.to_json(), width=3)
    with pytest.raises(si.ParameterError, match="layout.block/width"):
        Layout.from_json(bad)


class _SmallLoLA(nn.Module):
    """LoLA's shape at 12x12: conv 2x2 stride 2, BatchNorm, square, linear, BatchNorm, square, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1 = nn.Conv2d(1, 3, 2, stride=2), nn.BatchNorm2d(3)
        self.fc1, self.bn2, self.fc2 = nn.Linear(108, 20), nn.BatchNorm1d(20), nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv(x))
        x = (x * x).flatten(1)
        x = self.bn2(self.fc1(x))
        return self.fc2(x * x)


def _small_lola(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = _SmallLoLA()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_a_convolution_reads_the_tap_packing_and_agrees() -> None:
    """Each conv output's kernel taps arrive in their own slots: no rotation before the first square."""
    model, x = _small_lola(0), torch.rand(6, 1, 12, 12)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    program = enc.program
    layout = program.published
    assert layout.gather and layout.chunks == len(layout.gather) and layout.period == layout.slots
    first = program.plan.affine[0][0]
    assert all(part.giant == 1 and len(part.blocks) == 1 for part in first.parts)  # a product per ciphertext
    assert Layout.from_json(layout.to_json()) == layout
    # every slot holds an input its output's kernel reads: 2x2 stride 2, so each input is read by one position
    held = np.asarray(layout.gather)
    assert set(np.unique(held)) - {-1} <= set(range(144))
    with torch.no_grad():
        want = model(x)
    assert float((enc(x) - want).abs().max()) < 1e-2
    dense = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency", packing="dense")
    assert not dense.program.published.gather
    assert float((dense(x) - want).abs().max()) < 1e-2


def test_the_tap_packing_depends_on_the_architecture_not_the_weights() -> None:
    x = torch.rand(4, 1, 12, 12)
    one, other = _small_lola(0), _small_lola(1)
    with torch.no_grad():
        other.conv.weight[1, 0, 0, 1] = 0.0  # a pruned weight must not show in the published layout
    layouts = [si.wrap(m, "tenseal", sample_input=x[:1], calibration=x, mode="latency").program.published
               for m in (one, other)]
    assert layouts[0].gather == layouts[1].gather


def test_a_published_gather_is_checked() -> None:
    model, x = _small_lola(0), torch.rand(4, 1, 12, 12)
    data = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency").program.published.to_json()
    too_far = dict(data, gather=[[144] + g[1:] for g in data["gather"]])
    with pytest.raises(si.ParameterError, match="layout.gather: every index"):
        Layout.from_json(too_far)
    with pytest.raises(si.ParameterError, match="layout.gather: expected chunks"):
        Layout.from_json(dict(data, gather=data["gather"][:-1] if len(data["gather"]) > 1 else data["gather"] * 2))
    with pytest.raises(si.ParameterError, match="layout.gather: expected a list"):
        Layout.from_json(dict(data, gather=[[0.5]]))


def test_the_tap_packing_puts_zero_where_no_input_is_read() -> None:
    x = np.array([5.0, 6.0, 7.0])
    packed = pack_latency(x, 8, 8, chunks=2, gather=[[0, 2, -1, 1, -1, -1, -1, -1], [-1] * 7 + [2]])
    assert list(packed[0]) == [5, 7, 0, 6, 0, 0, 0, 0] and list(packed[1]) == [0] * 7 + [7]
    with pytest.raises(ValueError, match="does not index"):
        pack_latency(x, 8, 8, chunks=1, gather=[[3] * 8])


def test_square_chains_are_recognised() -> None:
    from secure_infer.backends.tenseal._compile import (
        AffineStage,
        Compiled,
        PolyStage,
        square_chain,
    )

    def chain(*kinds: str) -> Compiled:
        stages = [AffineStage([i - 1], [np.eye(2)], np.zeros(2), ["a"]) if k == "A" else
                  PolyStage(i - 1, np.array([0.1, 0.5, 1.0] if k == "S" else [0.0, 1.0, 0.0, 0.2]), "p", exact=True)
                  for i, k in enumerate(kinds)]
        return Compiled(stages, 2, 2, len(stages) - 1, (0.0, 1.0))

    assert square_chain(chain("A", "S", "A")) == 1
    assert square_chain(chain("A", "S", "A", "S", "A")) == 2
    assert square_chain(chain("A")) == 0  # nothing to share
    assert square_chain(chain("A", "C", "A")) == 0  # a cubic needs its own levels
    assert square_chain(chain("S", "A")) == 0
    assert square_chain(chain("A", "S")) == 0  # a trailing square has no affine layer to share with


def test_square_chain_parameters_are_secure_and_smaller() -> None:
    from secure_infer.backends.tenseal._params import choose_square_chain

    for pairs in (1, 2, 3):
        chain = choose_square_chain(pairs, max_abs_output=100.0)
        assert chain is not None
        params, weight_bits = chain
        assert params.total_bits <= max_bits_128(params.poly_modulus_degree) and weight_bits >= 16
        *data, special = params.coeff_mod_bit_sizes
        # key switches act on inputs at the low scale 2^s: the special prime takes the bits left over
        assert special >= max(data) and (special == 60 or params.total_bits == max_bits_128(params.poly_modulus_degree))
        general = choose(2 * pairs + 1, max_abs_output=100.0, slots_needed=1)
        assert len(params.coeff_mod_bit_sizes) < len(general.coeff_mod_bit_sizes)
    assert choose_square_chain(0, max_abs_output=1.0) is None


def test_outputs_wider_than_a_ciphertext_are_split() -> None:
    """5,000 outputs at N=8192 (4,096 slots): two output ciphertexts, and a hidden layer that wide is split too."""
    torch.manual_seed(0)
    x = torch.rand(3, 6)
    wide = nn.Linear(6, 5000).eval()
    enc = si.wrap(wide, "tenseal", sample_input=x[:1], calibration=x, mode="latency",
                  poly_modulus_degree=8192, coeff_mod_bit_sizes=[40, 30, 40])
    layout = enc.program.published
    assert layout.output_chunks == 2 and Layout.from_json(layout.to_json()) == layout
    with torch.no_grad():
        assert float((enc(x) - wide(x)).abs().max()) < 1e-3
    assert enc.last_run.extra["ciphertexts_out"] == 2 * 3
    hidden = nn.Sequential(nn.Linear(6, 5000), zoo.Square(), nn.Linear(5000, 4)).eval()
    enc = si.wrap(hidden, "tenseal", sample_input=x[:1], calibration=x, mode="latency",
                  poly_modulus_degree=8192, coeff_mod_bit_sizes=[40, 30, 30, 30, 40])
    assert enc.program.published.output_chunks == 1 and len(enc.program.plan.affine[2][0].parts) == 2  # 2 chunks
    with torch.no_grad():
        assert float((enc(x) - hidden(x)).abs().max()) < 1e-3


@pytest.mark.slow
def test_batch_workers_evaluate_blocks_in_worker_processes_and_agree() -> None:
    model = _square_net()
    x = torch.rand(4100, 1, 8, 8)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x, workers=2)
    assert enc.program.params.slots < len(x)  # two blocks
    with torch.no_grad():
        assert float((enc(x) - model(x)).abs().max()) < 5e-2
    engine = enc.program._engine
    assert engine is not None and engine.worker_pids() and os.getpid() not in engine.worker_pids()
    assert enc.last_run.extra["ciphertexts_in"] == 2 * 64 and enc.last_run.batch_size == 4100
    enc.close()
    assert enc.program._engine is None
    with pytest.raises(si.ParameterError, match="batch"):
        si.wrap(model, "tenseal", sample_input=x[:1], mode="latency", workers=2)
    with pytest.raises(si.ParameterError, match="positive integer"):
        si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", workers=0)


def test_workers_that_encrypt_run_whole_blocks_under_their_own_keys() -> None:
    from secure_infer.engine import audit_outgoing

    model = _square_net()
    x = torch.rand(4100, 1, 8, 8)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x, workers=2, encrypt_on="workers")
    sent: list[bytes] = []
    with audit_outgoing(sent.append), torch.no_grad():
        y = enc(x)
        assert float((y - model(x)).abs().max()) < 5e-2
    engine = enc.program._engine
    assert engine is not None and engine.worker_pids() and os.getpid() not in engine.worker_pids()
    run = enc.last_run
    assert run.extra["ciphertexts_in"] == 2 * 64 and run.extra["ciphertexts_out"] == 2 * 3 and run.batch_size == 4100
    assert run.encrypt_s > 0 and run.compute_s > 0 and run.extra["ciphertext_bytes_out"] > 0
    # what the workers got: the layout, the program and plaintext rows; none of this process's key material
    keys = enc.program.client.keys
    secret = si.backends.tenseal._seal.to_bytes(keys._secret_key)
    assert sent and not any(blob[:64] in b for b in sent for blob in (secret, *keys.public_blobs.values()))
    assert "key pair it makes itself" in enc.program.describe()["workers"]
    enc.close()
    with pytest.raises(si.ParameterError, match="encrypt_on"):
        si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", workers=2, encrypt_on="server")


def test_workers_that_encrypt_are_refused_off_this_host() -> None:
    from secure_infer.engine import Engine

    class Remote(Engine):
        workers, same_host = 2, False

        def run(self, spec, blocks, *, in_flight=None):  # type: ignore[no-untyped-def, override]
            raise AssertionError("plaintext rows must not be sent")

        def start(self, spec):  # type: ignore[no-untyped-def, override]
            raise AssertionError("no worker should start")

        def close(self) -> None:
            pass

    model = _square_net()
    x = torch.rand(8, 1, 8, 8)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x, workers=2, encrypt_on="workers")
    with pytest.raises(si.ParameterError, match="local workers only"):
        enc.program._run_pipelines(np.zeros((8, 64)), Remote())


def test_latency_square_chain_is_faster_with_smaller_keys_and_agrees() -> None:
    model = _square_net()
    x = torch.rand(6, 1, 8, 8)
    precise = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    chain = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency", schedule="square-chain")
    assert chain.program.weight_bits > 0 and chain.program.params.depth < precise.program.params.depth
    assert len(chain.program.params.coeff_mod_bit_sizes) < len(precise.program.params.coeff_mod_bit_sizes)
    with torch.no_grad():
        plain = model(x)
        assert float((chain(x) - plain).abs().max()) < 1e-2
    assert sum(chain.program.key_bytes.values()) < sum(precise.program.key_bytes.values())
    assert "square chain" in chain.program.describe()["depth"]


def test_schedule_choices_are_checked() -> None:
    x = torch.rand(2, 4)
    with pytest.raises(si.ParameterError, match="schedule must be one of"):
        si.wrap(nn.Linear(4, 2), "tenseal", sample_input=x, schedule="fast")
    cubic = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).eval()  # Tanh: a degree-3 polynomial
    with pytest.raises(si.ParameterError, match="x\\*\\*2"):
        si.wrap(cubic, "tenseal", sample_input=x, calibration=x, schedule="square-chain")
    with pytest.raises(si.ParameterError, match="chooses its own primes"):
        si.wrap(_square_net(), "tenseal", sample_input=torch.rand(1, 1, 8, 8), schedule="square-chain", scale_bits=30)
    # batch mode falls back to one prime per level where the chain does not apply
    enc = si.wrap(cubic, "tenseal", sample_input=x, calibration=x, mode="batch")
    assert enc.program.weight_bits == 0


def test_the_tutorial_spelling_compiles_to_the_square_program() -> None:
    """TenSEAL's tutorial writes x * x and x.view(-1, 256): the same program as zoo.Square, no refusal."""
    torch.manual_seed(0)
    net = zoo.build("cryptonets", (1, 28, 28), 10).eval()
    x = torch.rand(2, 1, 28, 28)
    square = si.wrap(net, "tenseal", sample_input=x[:1], calibration=x, schedule="square-chain")
    spelled = si.wrap(TutorialConvNet(net).eval(), "tenseal", sample_input=x[:1], calibration=x, schedule="square-chain")
    assert spelled.program.params == square.program.params
    assert spelled.program.published == square.program.published
    assert [type(s).__name__ for s in spelled.program.compiled.stages] == \
        [type(s).__name__ for s in square.program.compiled.stages]
    with torch.no_grad():
        assert float((spelled(x) - net(x)).abs().max()) < 1e-2


def test_composed_rotations_use_the_fewest_key_switches_the_keys_allow() -> None:
    from secure_infer.backends.tenseal._execute import compose

    assert compose(64, ()) == [64] and compose(64, (1, 8, 64)) == [64]
    assert compose(512, (1, 8, 64)) == [64] * 8
    assert compose(72, (1, 8, 64)) == [64, 8] and compose(7, (1, 8)) == [1] * 7
    with pytest.raises(ValueError, match="not a sum"):
        compose(3, (2, 8))


@pytest.mark.slow
def test_capped_rotation_keys_compose_the_rest_and_agree() -> None:
    """Fewer Galois keys: a smaller upload, the other rotations composed of the kept ones, same outputs."""
    model, x = _small_lola(1), torch.rand(6, 1, 12, 12)
    full = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    steps = full.program.published.rotation_steps
    assert len(steps) >= 3  # the cap below removes at least one key
    capped = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency", rotation_keys=2)
    kept = capped.program.published.rotation_steps
    assert len(kept) == 2 and set(kept) <= set(steps) and min(kept) == min(steps)
    assert tuple(sorted(capped.program.server.public.rotation_steps)) == tuple(sorted(kept))
    assert capped.program.key_bytes["galois_keys"] < 0.8 * full.program.key_bytes["galois_keys"]
    assert "capped at 2" in capped.program.describe()["rotation keys"]
    with torch.no_grad():
        want = model(x)
    assert float((capped(x) - want).abs().max()) < 1e-2
    assert float((capped(x) - full(x)).abs().max()) < 1e-2
    # a cap at or above what the plan uses changes nothing
    roomy = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency", rotation_keys=len(steps))
    assert roomy.program.published.rotation_steps == steps and not roomy.program.plan.key_steps


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_bad_rotation_key_caps_are_refused(bad) -> None:
    x = torch.rand(2, 4)
    with pytest.raises(si.ParameterError, match="rotation_keys must be a whole number"):
        si.wrap(nn.Linear(4, 2), "tenseal", sample_input=x, rotation_keys=bad)


def test_batch_mode_refuses_a_rotation_key_cap() -> None:
    x = torch.rand(2, 4)
    with pytest.raises(si.ParameterError, match="mode='latency' only"):
        si.wrap(nn.Linear(4, 2), "tenseal", sample_input=x, mode="batch", rotation_keys=2)
