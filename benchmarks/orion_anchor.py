"""Orion anchor benchmark: per-image CKKS inference latency of Orion on MNIST-sized nets.

Optional reference point for secure-infer's TenSEAL latency numbers.  Orion
(``orion-fhe`` 1.0.2 on PyPI, the ASPLOS 2025 PyTorch-to-CKKS compiler built on
Lattigo) compiles the same two networks that secure-infer benchmarks, with the
same weights, and this script times them on this machine.

What it measures, per network:

* ``compile_s``: ``orion.init_scheme`` (CKKS context + secret/public/relin key
  generation, reported separately as ``keygen_s``) plus ``orion.fit`` and
  ``orion.compile`` (packing, level assignment, plaintext diagonals and
  Galois-key generation), reported as ``fit_s`` / ``orion_compile_s``.
* For each of N single images (1x1x28x28, uniform in [0, 1]): encode+encrypt,
  the FHE forward pass (``net.he(); net(ctxt)``, the server-side "evaluate"
  part) and decrypt+decode, each timed; medians over the N images are
  reported in ms, with ``per_image_ms`` = encrypt + evaluate + decrypt.
* ``max_abs_logit_error``: max |Orion FHE logits - torch module logits| over
  those images, plus ``cleartext_max_abs_diff`` (Orion's cleartext forward vs
  the torch module, which checks that the weights were copied faithfully).
* The CKKS parameters used (Orion's own LoLA/MNIST config, ``configs/lola.yml``
  in the Orion repository: LogN 13, LogQ [29, 26x5], LogP [29, 29], scale 2^26,
  conjugate-invariant ring, dense secret) and the key material size: the
  number of Galois keys Orion generated and their serialized size.

The networks (random weights, built by the two functions below, which import
only torch so that other benchmarks can reuse them):

* ``tutorial_net()``: the TenSEAL tutorial ConvNet, Conv2d(1,4,k7,s3) -> x^2 ->
  flatten(256) -> Linear(256,64) -> x^2 -> Linear(64,10).
* ``lola_net()``: Orion's LoLA MNIST net, Conv2d(1,5,k2,s2) -> BatchNorm2d(5) ->
  x^2 -> flatten(980) -> Linear(980,100) -> BatchNorm1d(100) -> x^2 ->
  Linear(100,10), eval mode, with non-trivial BatchNorm statistics.

Install (a separate venv: orion-fhe pins scipy<=1.14.1, and a plain
``pip install orion-fhe`` pulls a CUDA torch through torchvision).  These are
the commands that worked on the 2-core CPU dev machine (Python 3.11, CPU torch
wheel from the local index):

    python3.11 -m venv /tmp/orion-work/venv
    /tmp/orion-work/venv/bin/pip install torch==2.13.0
    /tmp/orion-work/venv/bin/pip install --no-deps orion-fhe==1.0.2
    /tmp/orion-work/venv/bin/pip install PyYAML certifi h5py matplotlib \
        "scipy<=1.14.1" tqdm numpy networkx

torchvision is NOT needed: Orion imports it only in ``orion.core.utils`` (the
MNIST/CIFAR download helpers), which this script never imports.  Installing a
PyPI torchvision next to the CPU torch breaks ``import torchvision``
("operator torchvision::nms does not exist"), so leave it out; when
torchvision is missing or broken the worker puts an empty stub on
``sys.modules`` (belt and braces; JSON field ``torchvision_stubbed``).  Orion's Lattigo
backend ships as a prebuilt shared library in the wheel (no Go toolchain
needed).  No YAML file is needed either: the config is passed as a dict.

Run:

    /tmp/orion-work/venv/bin/python benchmarks/orion_anchor.py \
        --net all --images 8 --out /tmp/orion-work/orion_anchor.json

Each network runs in its own child process (Orion keeps one global CKKS scheme
and its Lattigo/Go side prints progress to stdout); the children's output goes
to ``<out>.log``.  The driver itself can run under any Python: ``--python``
(or ``$ORION_PYTHON``) names the interpreter that has orion-fhe installed,
default the current one.  If that interpreter cannot import orion, the script
prints a message, writes ``{"skipped": reason}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

NETS = ("tutorial", "lola")

# Orion's recommended parameters for MNIST-sized networks: configs/lola.yml
# (identical to configs/mlp.yml) in github.com/baahl-nyu/orion.
ORION_LOLA_CONFIG = {
    "ckks_params": {
        "LogN": 13,
        "LogQ": [29, 26, 26, 26, 26, 26],
        "LogP": [29, 29],
        "LogScale": 26,
        "H": 8192,
        "RingType": "ConjugateInvariant",
    },
    "orion": {
        "margin": 2,
        "embedding_method": "hybrid",
        "backend": "lattigo",
        "fuse_modules": True,
        "debug": False,
        "diags_path": "",
        "keys_path": "",
        "io_mode": "none",
    },
}


# --------------------------------------------------------------------------
# Torch reference networks (importable without orion).
# --------------------------------------------------------------------------


class Square(nn.Module):
    def forward(self, x):
        return x * x


def _tutorial(base, conv, square, flatten, linear):
    """The tutorial ConvNet's class on ``base`` with these layer types (torch's, or orion.nn's)."""

    class Tutorial(base):
        """TenSEAL tutorial ConvNet: conv(1->4, k7, s3) -> x^2 -> fc(256->64) -> x^2 -> fc(64->10)."""

        def __init__(self):
            super().__init__()
            self.conv1 = conv(1, 4, kernel_size=7, stride=3, padding=0)
            self.act1 = square()
            self.flatten = flatten()
            self.fc1 = linear(256, 64)
            self.act2 = square()
            self.fc2 = linear(64, 10)

        def forward(self, x):
            x = self.act1(self.conv1(x))
            x = self.flatten(x)
            x = self.act2(self.fc1(x))
            return self.fc2(x)

    return Tutorial


TutorialNet = _tutorial(nn.Module, nn.Conv2d, Square, nn.Flatten, nn.Linear)


class LoLANet(nn.Module):
    """Orion's LoLA MNIST net (same attribute names as ``orion.models.LoLA``)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 5, kernel_size=2, padding=0, stride=2)
        self.bn1 = nn.BatchNorm2d(5)
        self.act1 = Square()
        self.fc1 = nn.Linear(980, 100)
        self.bn2 = nn.BatchNorm1d(100)
        self.act2 = Square()
        self.fc2 = nn.Linear(100, num_classes)
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.flatten(x)
        x = self.act2(self.bn2(self.fc1(x)))
        return self.fc2(x)


def tutorial_net() -> nn.Module:
    """The tutorial ConvNet as built right after ``torch.manual_seed(0)``, in eval mode."""
    torch.manual_seed(0)
    net = TutorialNet()
    return net.eval()


def lola_net() -> nn.Module:
    """The LoLA net built after ``torch.manual_seed(0)``, with BatchNorm statistics.

    After construction (same generator, no reseed), for bn1 then bn2, in this
    order: running_mean ~ U(-0.5, 0.5), running_var ~ U(0.5, 2.0),
    weight ~ U(0.5, 1.5), bias ~ U(-0.3, 0.3).  Returned in eval mode.
    """
    torch.manual_seed(0)
    net = LoLANet()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            n = bn.num_features
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(torch.rand(n) - 0.5)
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(n))
            bn.weight.copy_(0.5 + torch.rand(n))
            bn.bias.copy_(0.6 * torch.rand(n) - 0.3)
    return net.eval()


BUILDERS = {"tutorial": tutorial_net, "lola": lola_net}


def make_inputs(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


# --------------------------------------------------------------------------
# Orion side (worker process only).
# --------------------------------------------------------------------------


def _stub_torchvision_if_broken():
    """Orion only needs torchvision for dataset helpers; stub it if it won't import."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:
        import types

        for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
            sys.modules.pop(name, None)
        tv = types.ModuleType("torchvision")
        tv.datasets = types.ModuleType("torchvision.datasets")
        tv.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.datasets"] = tv.datasets
        sys.modules["torchvision.transforms"] = tv.transforms
        return True


def _orion_net(name: str):
    import orion.nn as on

    if name == "tutorial":  # same attribute names as TutorialNet, so its weights load as they are
        return _tutorial(on.Module, on.Conv2d, on.Quad, on.Flatten, on.Linear)()
    from orion.models import LoLA

    return LoLA()


def _key_sizes(scheme) -> dict:
    """Serialized sizes of Orion's key material (secret key, Galois keys)."""
    backend = scheme.backend
    out: dict[str, float] = {}
    sk, ptr = backend.SerializeSecretKey()
    out["secret_key_bytes"] = int(len(sk))
    backend.FreeCArray(ptr)
    gal = sorted(scheme.lt_evaluator.saved_rotation_keys)
    out["num_galois_keys"] = len(gal)
    if gal:
        # Generates (and discards) one extra copy of an existing Galois key;
        # all Galois keys of a parameter set serialize to the same size.
        data, ptr = backend.GenerateAndSerializeRotationKey(int(gal[0]))
        per_key = int(len(data))
        backend.FreeCArray(ptr)
        out["galois_key_bytes_each"] = per_key
        # The relinearization key has the same gadget structure as a Galois key.
        out["relin_key_bytes_est"] = per_key
        out["eval_keys_total_bytes_est"] = per_key * (len(gal) + 1)
        out["eval_keys_total_MiB_est"] = round(per_key * (len(gal) + 1) / 2**20, 1)
    return out


def run_worker(name: str, n_images: int) -> dict:
    stubbed = _stub_torchvision_if_broken()
    import orion

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ref = BUILDERS[name]()
    net = _orion_net(name)
    missing, unexpected = net.load_state_dict(ref.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight copy mismatch: missing={missing} unexpected={unexpected}")
    net.eval()

    xs = make_inputs(n_images)
    fit_data = make_inputs(64, seed=2)
    with torch.no_grad():
        ref_out = ref(xs)
        clear_diff = (net(xs) - ref_out).abs().max().item()

    t0 = time.perf_counter()
    scheme = orion.init_scheme(ORION_LOLA_CONFIG)  # context + sk/pk/rlk
    keygen_s = time.perf_counter() - t0
    # Orion compiles for the batch size it sees in fit(): a plain tensor of 64
    # would give a 64-image (50176-slot) network.  A DataLoader with
    # batch_size=1 fits statistics in larger batches, then compiles for 1.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(fit_data, torch.zeros(len(fit_data))), batch_size=1
    )
    t1 = time.perf_counter()
    orion.fit(net, loader)
    fit_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    input_level = orion.compile(net)  # packing, diagonals, Galois keys
    compile_only_s = time.perf_counter() - t2
    compile_total_s = time.perf_counter() - t0

    with torch.no_grad():
        clear_diff_after = (net(xs) - ref_out).abs().max().item()

    enc_ms, eval_ms, dec_ms, tot_ms, errs = [], [], [], [], []
    n_in_ctxts = None
    for i in range(n_images):
        x = xs[i : i + 1]
        ta = time.perf_counter()
        ctxt = orion.encrypt(orion.encode(x, input_level))
        tb = time.perf_counter()
        net.he()
        out_ctxt = net(ctxt)
        tc = time.perf_counter()
        y = out_ctxt.decrypt().decode()
        td = time.perf_counter()
        net.eval()
        n_in_ctxts = len(ctxt)
        enc_ms.append((tb - ta) * 1e3)
        eval_ms.append((tc - tb) * 1e3)
        dec_ms.append((td - tc) * 1e3)
        tot_ms.append((td - ta) * 1e3)
        errs.append((y.reshape(1, -1)[:, :10] - ref_out[i : i + 1]).abs().max().item())
        del ctxt, out_ctxt

    p = scheme.params
    logq, logp = p.get_logq(), p.get_logp()
    med = lambda v: round(statistics.median(v), 2)  # noqa: E731
    res = {
        "net": name,
        "images": n_images,
        "per_image_ms": med(tot_ms),
        "encrypt_ms": med(enc_ms),
        "evaluate_ms": med(eval_ms),
        "decrypt_ms": med(dec_ms),
        "per_image_ms_all": [round(v, 2) for v in tot_ms],
        "evaluate_ms_all": [round(v, 2) for v in eval_ms],
        "max_abs_logit_error": max(errs),
        "max_abs_logit": ref_out.abs().max().item(),
        "cleartext_max_abs_diff": max(clear_diff, clear_diff_after),
        "compile_s": round(compile_total_s, 3),
        "keygen_s": round(keygen_s, 3),
        "fit_s": round(fit_s, 3),
        "orion_compile_s": round(compile_only_s, 3),
        "input_level": int(input_level),
        "input_ciphertexts": n_in_ctxts,
        "ckks_params": {
            "ring_degree": p.get_ring_degree(),
            "log_n": p.get_logn(),
            "slots": p.get_slots(),
            "ring_type": p.get_ringtype(),
            "log_q": list(logq),
            "log_p": list(logp),
            "num_q_primes": len(logq),
            "num_p_primes": len(logp),
            "log_Q": sum(logq),
            "log_QP": sum(logq) + sum(logp),
            "log_scale": p.get_logscale(),
            "secret_hamming_weight": p.get_hamming_weight(),
            "levels": p.get_max_level(),
            "embedding_method": p.get_embedding_method(),
        },
        "keys": _key_sizes(scheme),
        "torchvision_stubbed": stubbed,
    }
    return res


# --------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------


def _check_orion(python: str) -> str | None:
    """Return None if `python` can import orion, else a reason string."""
    code = "import orion, sys; sys.stdout.write(getattr(orion, '__file__', '') or '')"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except Exception as e:  # interpreter missing, etc.
        return f"cannot run {python}: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"orion (orion-fhe) not importable with {python}: {last}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=(*NETS, "all"), default="all")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default=None, help="JSON results file (default: stdout only)")
    ap.add_argument(
        "--python",
        default=os.environ.get("ORION_PYTHON", sys.executable),
        help="interpreter with orion-fhe installed (default: $ORION_PYTHON or this one)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="per-net worker timeout, s")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:  # child: stdout belongs to Orion/Lattigo noise
        res = run_worker(args._worker, args.images)
        with open(args._result, "w") as f:
            json.dump(res, f)
        return 0

    def emit(obj) -> None:
        text = json.dumps(obj, indent=2)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text + "\n")
        print(text)

    reason = _check_orion(args.python)
    if reason:
        print(f"orion_anchor: skipped: {reason}", file=sys.stderr)
        emit({"skipped": reason})
        return 0

    nets = NETS if args.net == "all" else (args.net,)
    log_path = (args.out + ".log") if args.out else os.devnull
    results = {
        "tool": "orion-fhe",
        "orion_version": _orion_version(args.python),
        "torch_version": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "images": args.images,
        "nets": {},
    }
    t_all = time.perf_counter()
    script = os.path.abspath(__file__)
    with open(log_path, "w") as log, tempfile.TemporaryDirectory(prefix="orion-anchor-") as tmp:
        for name in nets:
            result_file = os.path.join(tmp, f"{name}.json")
            cmd = [
                args.python,
                script,
                "--_worker",
                name,
                "--images",
                str(args.images),
                "--_result",
                result_file,
            ]
            log.write(f"=== {name}: {' '.join(cmd)}\n")
            log.flush()
            t0 = time.perf_counter()
            try:
                # cwd=tmp: anything Orion writes relative to cwd stays out of the repo.
                r = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, timeout=args.timeout
                )
                rc: int | str = r.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = round(time.perf_counter() - t0, 2)
            if rc == 0 and os.path.exists(result_file):
                with open(result_file) as f:
                    res = json.load(f)
                res["worker_wall_s"] = wall
            else:
                res = {"error": f"worker exited with {rc}; see {log_path}", "worker_wall_s": wall}
            results["nets"][name] = res
            s = res.get("per_image_ms")
            print(
                f"orion_anchor: {name}: "
                + (
                    f"{s} ms/image (evaluate {res['evaluate_ms']} ms), "
                    f"max err {res['max_abs_logit_error']:.2e}, compile {res['compile_s']} s"
                    if s is not None
                    else res["error"]
                ),
                file=sys.stderr,
            )
    results["total_wall_s"] = round(time.perf_counter() - t_all, 2)
    emit(results)
    return 0 if all("error" not in r for r in results["nets"].values()) else 1


def _orion_version(python: str) -> str | None:
    code = "import importlib.metadata as m; print(m.version('orion-fhe'))"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return r.stdout.strip() or None
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
