"""TenSEAL: secure-infer's compiled CKKS programs against TenSEAL by hand and plaintext.

    python -m pytest benchmarks/test_tenseal.py --benchmark-json=tenseal.json

Reference network (TenSEAL's MNIST tutorial shape): conv 1->4 7x7 stride 3,
x**2, fc 256->64, x**2, fc 64->10, on 28x28 inputs. The inputs are generated
(MNIST-shaped, timing only): HE cost does not depend on pixel values. Errors
are measured against the plaintext model on the same inputs. Key and
ciphertext sizes are in each benchmark's extra_info.
"""

from __future__ import annotations

import pytest
import torch

import secure_infer as si
from secure_infer import zoo
from secure_infer.anchors import TutorialConvNet, TutorialPipeline

SLOTS = 4096


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = zoo.build("cryptonets", (1, 28, 28), 10).eval()
    data = si.datasets.mnist_shaped(SLOTS, seed=0)
    return model, data.x_test


@pytest.fixture(scope="module")
def wrapped(reference):
    model, x = reference
    out = {mode: si.wrap(model, "tenseal", sample_input=x[:1], mode=mode, calibration=x[:256])
           for mode in ("latency", "batch")}
    # fewer, larger primes: each affine layer shares its square's rescale (weights at 2^15)
    out["latency-square-chain"] = si.wrap(model, "tenseal", sample_input=x[:1], mode="latency", calibration=x[:256],
                                          schedule="square-chain")
    # both cores: two spawned workers, each evaluating whole blocks
    out["batch-2-workers"] = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x[:256], workers=2)
    # the same weights written the tutorial's way (x * x, view): the front end must give the same program
    out["latency-tutorial-spelling"] = si.wrap(TutorialConvNet(model).eval(), "tenseal", sample_input=x[:1],
                                               mode="latency", calibration=x[:256])
    return out


def test_plaintext_one_image(benchmark, reference) -> None:
    model, x = reference
    benchmark.group = "tenseal reference28 one image"
    with torch.no_grad():
        benchmark(model, x[:1])


def test_tenseal_handwritten_one_image(benchmark, reference) -> None:
    model, x = reference
    pipeline = TutorialPipeline.build(model)
    benchmark.group = "tenseal reference28 one image"
    out, phases = benchmark.pedantic(pipeline.infer, args=(x[0],), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(phases)
    benchmark.extra_info["public_context_bytes"] = pipeline.public_context_bytes()
    benchmark.extra_info["max_abs_error"] = float((out - model(x[:1]).detach()[0]).abs().max())


@pytest.mark.parametrize("variant", ["latency", "latency-square-chain", "latency-tutorial-spelling"])
def test_secure_infer_latency_one_image(benchmark, reference, wrapped, variant) -> None:
    model, x = reference
    enc = wrapped[variant]
    benchmark.group = "tenseal reference28 one image"
    y = benchmark.pedantic(enc, args=(x[:1],), rounds=5, warmup_rounds=1)
    run = enc.last_run
    benchmark.extra_info.update(
        encrypt_s=run.encrypt_s, compute_s=run.compute_s, decrypt_s=run.decrypt_s,
        public_key_material_bytes=run.extra["public_key_material_bytes"], key_bytes=run.extra["key_bytes"],
        ciphertext_bytes_in=run.extra["ciphertext_bytes_in"], rotation_keys=run.extra["rotation_keys"],
        parameters=enc.program.params.describe(),
        max_abs_error=float((y - model(x[:1]).detach()).abs().max()),
    )


def test_plaintext_full_batch(benchmark, reference) -> None:
    model, x = reference
    benchmark.group = f"tenseal reference28 batch of {SLOTS}"
    with torch.no_grad():
        benchmark(model, x)


@pytest.mark.parametrize("variant", ["batch", "batch-2-workers"])
def test_secure_infer_batch(benchmark, reference, wrapped, variant) -> None:
    model, x = reference
    enc = wrapped[variant]
    if variant == "batch-2-workers":  # workers evaluate whole blocks: one block per worker
        x = torch.cat([x, x])
    benchmark.group = f"tenseal reference28 batch of {SLOTS} per worker"
    y = benchmark.pedantic(enc, args=(x,), rounds=1, warmup_rounds=0)
    run = enc.last_run
    benchmark.extra_info.update(
        images=len(x), end_to_end_images_per_s=len(x) / run.wall_s,
        server_images_per_s=len(x) / run.compute_s, encrypt_s=run.encrypt_s, compute_s=run.compute_s,
        decrypt_s=run.decrypt_s, public_key_material_bytes=run.extra["public_key_material_bytes"],
        ciphertext_bytes_in=run.extra["ciphertext_bytes_in"],
        max_abs_error=float((y - model(x).detach()).abs().max()),
        argmax_agreement=float((y.argmax(1) == model(x).argmax(1)).float().mean()),
    )


@pytest.mark.parametrize("width", [3000, 20000])
def test_secure_infer_wide_input(benchmark, width) -> None:
    """A linear layer wider than one ciphertext (20,000 > the largest ring's 16,384 slots): split into chunks."""
    torch.manual_seed(0)
    model = torch.nn.Linear(width, 2).eval()
    x = torch.rand(2, width)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode="latency")
    benchmark.group = f"tenseal linear {width}->2 one input"
    y = benchmark.pedantic(enc, args=(x[:1],), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(
        chunks=enc.program.published.chunks, parameters=enc.program.params.describe(),
        public_key_material_bytes=enc.last_run.extra["public_key_material_bytes"],
        max_abs_error=float((y - model(x[:1]).detach()).abs().max()),
    )
