"""The TenSEAL backend: models compiled to CKKS homomorphic programs.

The caller keeps the secret key (:class:`~._seal.ClientKeys`); the evaluating
side (:class:`~._seal.ServerContext`) is built from public material only:
relinearization keys and Galois keys for exactly the rotations the program
uses, loaded from the same seeded bytes a remote client would upload. ``mode="latency"`` packs one input per ciphertext (diagonal
method, few rotation keys); ``mode="batch"`` packs one input per slot
(CryptoNets SIMD) for throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from secure_infer._errors import ParameterError, UnsupportedModelError
from secure_infer.backends import register_backend
from secure_infer.backends.base import Backend, Program, RunStats
from secure_infer.backends.tenseal import _raw
from secure_infer.backends.tenseal._blocks import (
    BlockEvaluator,
    BlockPipeline,
    BlockResult,
    PipelineResult,
    stream,
)
from secure_infer.backends.tenseal._client import Layout, LayoutClient, RunTotals
from secure_infer.backends.tenseal._compile import Compiled, compile_graph, square_chain
from secure_infer.backends.tenseal._execute import BatchPlan, LatencyPlan
from secure_infer.backends.tenseal._params import CKKSParameters, choose, choose_square_chain
from secure_infer.backends.tenseal._rules import RULES
from secure_infer.backends.tenseal._seal import (
    SecretKeyInContext,
    ServerContext,
    from_bytes,
    galois_element,
    screen_tenseal_context,
    serialized_size,
    to_bytes,
)
from secure_infer.engine import Engine, LocalEngine, split
from secure_infer.graph import Conversion, Graph

MODES = ("latency", "batch")
_OPTIONS = {"mode", "calibration", "poly_degree", "poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits",
            "margin", "workers", "encrypt_on", "schedule", "tolerance", "packing",
            "rotation_keys"}
NOISE_ALLOWANCE = 10.0
"""The worst-case bound allows for this many times the CKKS rounding noise measured on the calibration data."""
SCHEDULES = ("levels", "square-chain")
ENCRYPT_ON = ("caller", "workers")
PACKINGS = ("auto", "dense")


class TensealProgram(Program):
    """A model compiled to CKKS: encrypts, evaluates on ciphertexts, decrypts."""

    def __init__(self, graph: Graph, sample_input: torch.Tensor, *, mode: str = "latency",
                 calibration: torch.Tensor | None = None, poly_degree: int | None = None,
                 poly_modulus_degree: int | None = None, coeff_mod_bit_sizes: list[int] | None = None,
                 scale_bits: int | None = None, margin: float = 0.1, workers: int = 1, encrypt_on: str = "caller",
                 schedule: str | None = None, tolerance: float | None = None, packing: str = "auto",
                 rotation_keys: int | None = None) -> None:
        """``schedule``: ``"levels"`` (one prime per multiplication: most precise) or ``"square-chain"``
        (each affine layer shares the next square's prime: fewer primes, faster, smaller keys, weights
        encoded at 2^15-2^17). Default: the square chain in batch mode, where weights are scalars and
        lose nothing measurable, levels in latency mode, where weights are vectors and CKKS encodes
        them less exactly (on the digits CNN's test set: max logit error 0.3 instead of 0.005, argmax
        agreement 449/450 instead of 450/450).

        ``packing`` (latency mode): ``"auto"`` lets the first layer read the tap packing
        when it is cheaper: the client sends, for each output, the inputs its
        kernel reads, so a convolution costs a few plaintext products instead of
        a diagonal product with rotations (the published layout then shows the
        first layer's kernel size, stride and padding, never a weight);
        ``"dense"`` publishes layer widths only.

        ``rotation_keys`` (latency mode): at most this many Galois keys, for a
        client whose upload is tight. Each is as large as the relinearization
        key (1.65 MB at N=8192 with six data primes), and by default the plan
        asks for one per rotation step it uses (nine on the TenSEAL tutorial
        ConvNet: 16.6 MB in all). With fewer, the cheapest set by the cost model
        is kept and every other rotation is composed of them, one key switch
        each, so inference slows: on the tutorial net, 4 keys (8.3 MB in all)
        took 1.35x the time of nine, 3 keys (6.6 MB) 2.1x (2 cores, measured
        by ``benchmarks/orion_table.py --rotation-keys 4,3``).

        ``workers`` (batch mode): a call of several blocks runs them on that many
        spawned processes. ``encrypt_on="caller"`` (default): the workers hold the
        evaluation keys only and this process encrypts and decrypts, the split a
        client and a server have. ``encrypt_on="workers"``: each worker encrypts,
        evaluates and decrypts whole blocks under a key pair it makes itself, so
        encryption (which SEAL runs under Python's lock) uses every core too; the
        caller's plaintext rows go to its own processes and no key leaves the one
        that made it. For throughput on one machine.

        ``calibration`` sets the accepted input range (its min and max, widened by
        ``margin`` of the span): the client refuses anything outside it, and every
        polynomial activation is fitted on the interval its input can reach for any
        input in that range. ``poly_degree`` fixes their degree; by default it is the
        smallest whose error on the calibration outputs is at most ``tolerance``
        (default: 2% of their standard deviation)."""
        if mode not in MODES:
            raise ParameterError(f"mode must be one of {MODES}, got {mode!r}")
        if schedule not in (None, *SCHEDULES):
            raise ParameterError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if schedule == "square-chain" and (coeff_mod_bit_sizes is not None or scale_bits is not None):
            raise ParameterError("schedule='square-chain' chooses its own primes and scales: drop "
                                 "coeff_mod_bit_sizes/scale_bits, or use schedule='levels'")
        if rotation_keys is not None:
            if isinstance(rotation_keys, bool) or not isinstance(rotation_keys, int) or rotation_keys < 1:
                raise ParameterError(f"rotation_keys must be a whole number >= 1 (the most Galois keys a client "
                                     f"uploads), got {rotation_keys!r}")
            if mode != "latency":
                raise ParameterError(f"rotation_keys applies to mode='latency' only (batch mode rotates nothing): "
                                     f"drop it, or use mode='latency' (got mode={mode!r})")
        if packing not in PACKINGS:
            raise ParameterError(f"packing must be one of {PACKINGS}, got {packing!r}")
        _check_workers(workers, mode)
        if encrypt_on not in ENCRYPT_ON:
            raise ParameterError(f"encrypt_on must be one of {ENCRYPT_ON}, got {encrypt_on!r}")
        calib = sample_input if calibration is None else calibration
        if isinstance(calib, torch.Tensor):
            calib = graph.prepare(calib).float()  # token indices: one-hot, like the client does
        if not isinstance(calib, torch.Tensor) or tuple(calib.shape[1:]) != tuple(graph.input_shape[1:]):
            raise ParameterError(f"calibration must be a tensor shaped (n, {', '.join(map(str, graph.input_shape[1:]))})")
        self.mode = mode
        self.graph = graph
        self.weight_bits = 0  # > 0: the square-chain schedule (see choose_square_chain)
        self.compiled: Compiled = compile_graph(graph, calib, degree=poly_degree, margin=margin, tolerance=tolerance,
                                                feasible=lambda depth, out: _feasible(depth, out, mode))
        self.input_range = self.compiled.input_range
        flat_calib = calib.double().reshape(len(calib), -1).numpy()
        calib_out = self.compiled.run_plain(flat_calib)
        # Worst case over every input the client may send (each element in
        # input_range), not just the calibration set: sizes the first prime so
        # that no allowed input can wrap around the modulus and decrypt to garbage.
        max_out = max(float(np.abs(calib_out).max()), self.compiled.output_bound)
        self.worst_case_output = max_out
        depth = self.levels_used = self.compiled.depth
        slots_needed = LatencyPlan.periods_fit(self.compiled) if mode == "latency" else 1
        if coeff_mod_bit_sizes is not None or poly_modulus_degree is not None:
            if coeff_mod_bit_sizes is None or poly_modulus_degree is None:
                raise ParameterError("give poly_modulus_degree and coeff_mod_bit_sizes together")
            self.params = CKKSParameters(int(poly_modulus_degree), tuple(int(b) for b in coeff_mod_bit_sizes),
                                         int(scale_bits or coeff_mod_bit_sizes[1]))
            self.params.validate()
            if self.params.depth < depth:
                raise ParameterError(f"the program needs depth {depth}; coeff_mod_bit_sizes give {self.params.depth}")
        else:
            chain = None
            if (schedule or ("square-chain" if mode == "batch" else "levels")) == "square-chain" and scale_bits is None:
                # latency mode's vector weights want more precision: a larger input scale, weights at 2^15
                candidates = ((24, 15), (23, 15), (22, 15), (22, 14)) if mode == "latency" else None
                chain = choose_square_chain(square_chain(self.compiled), max_abs_output=max_out,
                                            slots_needed=slots_needed, candidates=candidates)
            if chain is None and schedule == "square-chain":
                raise ParameterError(
                    "schedule='square-chain' needs a model of affine layers and x**2 activations "
                    "(affine, x**2, affine, ...) whose outputs fit the parameters, and no scale_bits; "
                    "use schedule='levels'")
            if chain is not None:
                self.params, self.weight_bits = chain
                self.levels_used = self.params.depth
            else:
                self.params = choose(depth, max_abs_output=max_out, slots_needed=slots_needed, scale_bits=scale_bits,
                                     min_scale_bits=_min_scale_bits(self.compiled))
        # the last stage's outputs carry the input scale, times the weight scale when not rescaled
        self.output_bound = 2.0 ** (self.params.coeff_mod_bit_sizes[0] - self.params.scale_bits - self.weight_bits - 1)
        if max_out > self.output_bound:
            raise ParameterError(
                f"outputs can reach {max_out:.3g} for inputs in [{self.input_range[0]:.3g}, {self.input_range[1]:.3g}], but the first prime "
                f"({self.params.coeff_mod_bit_sizes[0]} bits at scale 2^{self.params.scale_bits}) holds only "
                f"|y| <= {self.output_bound:.3g}: decryption would return garbage. Use a larger first prime "
                "or let secure-infer choose the parameters"
            )
        slots = self.params.slots
        started = time.perf_counter()
        if mode == "latency":
            self.plan: LatencyPlan | BatchPlan = LatencyPlan(self.compiled, None, slots, self.weight_bits,
                                                             len(self.params.coeff_mod_bit_sizes) - 1,
                                                             taps=packing == "auto", max_rotation_keys=rotation_keys)
            steps = tuple(sorted(self.plan.rotation_steps))
        else:
            self.plan = BatchPlan(self.compiled, None, slots, self.weight_bits)
            steps = ()
        self.published = Layout(
            mode=mode, input_shape=tuple(graph.input_shape[1:]), output_size=self.compiled.output_size,
            input_range=self.input_range, output_bound=self.output_bound, params=self.params,
            rotation_steps=tuple(s % slots for s in steps if s % slots),
            output_shape=tuple(graph.output.feature_shape), epilogue=tuple(graph.epilogue_spec()),
            **(self.plan.layout_fields() if isinstance(self.plan, LatencyPlan) else {}),
        )
        # client side: keys; only public material crosses to the server object
        self.client: LayoutClient | None = LayoutClient(self.published)
        self.server = ServerContext(self.params, None)
        public = self.server.load_keys(self.client.keys.public_blobs, self.client.keys.rotation_steps)
        if isinstance(self.plan, LatencyPlan):
            self.plan.encode_weights(self.server)
        else:
            self.plan.server = self.server
        self.setup_s = time.perf_counter() - started
        self.key_bytes = public.sizes()
        self.conversions = list(graph.conversions) + _conversions(graph, self.compiled)
        self._ct_in_bytes: int | None = None
        self.workers = workers
        self.encrypt_on = encrypt_on
        self._engine: LocalEngine | None = None  # started on the first call that spans several blocks
        self._spec: dict[bool, BlockEvaluator] = {}
        self._pipeline: BlockPipeline | None = None  # one object, so an engine that holds it keeps its workers
        self.noise: float | None = None  # CKKS rounding noise, measured by run() (wrap's run on the sample)

    @property
    def worst_case_error(self) -> float | None:
        """Bound on |output error| for any accepted input: the approximations' interval bound plus
        :data:`NOISE_ALLOWANCE` times the CKKS noise measured so far (None before any measurement)."""
        if self.noise is None:
            return None
        return self.compiled.error_bound + NOISE_ALLOWANCE * self.noise

    def run(self, x: torch.Tensor, reveal: frozenset[str] = frozenset()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Evaluate ``x`` and measure the CKKS noise: the difference from the same program in float64."""
        y = self(x)
        flat = self.graph.prepare(x).double().reshape(len(x), -1).numpy()
        reference = self.compiled.run_plain(flat)
        core = self.graph.output
        mine = y.movedim(core.batch_dim, 0) if core.batch_dim else y
        noise = float(np.abs(mine.double().reshape(len(flat), -1).numpy() - reference).max())
        self.noise = noise if self.noise is None else max(self.noise, noise)
        return y, {}

    def forget_client_keys(self) -> None:
        """Drop the local key pair: the program then only evaluates for remote clients' keys.

        A protocol server calls this after ``wrap`` has measured the
        approximation errors, so the model owner holds no secret key at all.
        """
        self.client = None
        self._spec = {}
        self.close()
        self.server = ServerContext(self.params, None)
        self.plan.server = self.server

    def worker_spec(self, same_host: bool = False) -> BlockEvaluator:
        """What a batch-mode worker needs (public material only): see :mod:`secure_infer.engine`.

        ``same_host``: ciphertexts travel as raw coefficients (a copy) rather
        than SEAL's compressed bytes, when the buffers are accessible here.
        """
        if not isinstance(self.plan, BatchPlan):
            raise ParameterError("only mode='batch' evaluates blocks on workers; wrap with mode='batch'")
        if self.client is None:
            raise ParameterError("this program holds no key pair (forget_client_keys() was called)")
        raw = same_host and _raw.available()
        if raw not in self._spec:  # one object each, so an engine that holds it does not restart its workers
            self._spec[raw] = BlockEvaluator(self.params, self.compiled, self.weight_bits,
                                             dict(self.client.keys.public_blobs), self.client.keys.rotation_steps,
                                             raw)
        return self._spec[raw]

    def stream(self, x: torch.Tensor | np.ndarray, engine: Engine, *, blocks: list[tuple[int, range]] | None = None,
               on_encrypted: Callable[[int], None] | None = None) -> Iterator[BlockResult]:
        """Batch mode over ``engine``: encrypt ``x``'s blocks here, evaluate them on its workers, decrypt here.

        ``blocks``: ``(index, rows)`` pairs to run (default: all of ``x`` in
        slot-sized blocks); results come in completion order, each with its
        rows. The secret key and the plaintext never leave this process.
        """
        spec = self.worker_spec(engine.same_host)
        assert self.client is not None
        yield from self._stream_flat(spec, self.client.check_input(x), engine, blocks, on_encrypted)

    def _stream_flat(self, spec: BlockEvaluator, flat: np.ndarray, engine: Engine,
                     blocks: list[tuple[int, range]] | None,
                     on_encrypted: Callable[[int], None] | None = None) -> Iterator[BlockResult]:
        assert self.client is not None
        if blocks is None:
            blocks = list(enumerate(split(len(flat), self.params.slots)))
        for index, rows in blocks:
            if len(rows) > self.params.slots or rows.stop > len(flat) or rows.start < 0:
                raise ParameterError(f"block {index} ({rows.start}..{rows.stop}) must lie in the {len(flat)} inputs "
                                     f"and hold at most {self.params.slots} (the slots)")
        yield from stream(self.client, spec, flat, engine, blocks=blocks, context=self.client.keys.context,
                          on_encrypted=on_encrypted)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def evaluate(self, ciphertexts: list[Any], server: ServerContext | None = None) -> list[Any]:
        """Server side: one request's ciphertexts in, output ciphertexts out, under ``server``'s keys.

        A request is one input in latency mode, a block of inputs (one
        ciphertext per feature) in batch mode: see :meth:`LayoutClient.requests`.
        """
        if isinstance(self.plan, LatencyPlan):
            if len(ciphertexts) != self.plan.chunks:
                raise ParameterError(f"latency mode takes {self.plan.chunks} ciphertext(s) per request, got {len(ciphertexts)}")
            return self.plan.run(list(ciphertexts), server)
        if len(ciphertexts) != self.compiled.input_size:
            raise ParameterError(f"batch mode takes {self.compiled.input_size} ciphertexts (one per input value), "
                                 f"got {len(ciphertexts)}")
        return self.plan.run(ciphertexts, server)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.client is None:
            raise ParameterError("this program serves remote clients (forget_client_keys() was called): it has no "
                                 "key pair here; query it through protocols.he.HEClient")
        flat = self.client.check_input(x)
        started = time.perf_counter()
        if self.workers > 1 and isinstance(self.plan, BatchPlan) and len(flat) > self.params.slots:
            y, totals = self._run_on_workers(flat)
        else:
            y, totals = self.client.run(flat, self.evaluate)
        if self._ct_in_bytes is None:
            self._ct_in_bytes = self.client.keys.wire_size()  # seeded, as a remote client sends it
            self._ct_out_bytes = (serialized_size(totals.sample_out) if totals.sample_out is not None
                                  else totals.sample_out_bytes)
        n_in, n_out = totals.ciphertexts_in, totals.ciphertexts_out
        self.last_run = RunStats(
            backend="tenseal", batch_size=len(flat), wall_s=time.perf_counter() - started,
            encrypt_s=totals.encrypt_s, compute_s=totals.evaluate_s, decrypt_s=totals.decrypt_s,
            bytes_sent=n_in * self._ct_in_bytes + n_out * self._ct_out_bytes,
            extra={
                "mode": self.mode, "ciphertexts_in": n_in, "ciphertexts_out": n_out,
                "ciphertext_bytes_in": n_in * self._ct_in_bytes, "ciphertext_bytes_out": n_out * self._ct_out_bytes,
                "key_bytes": dict(self.key_bytes), "public_key_material_bytes": sum(self.key_bytes.values()),
                "depth_used": self.levels_used, "depth_available": self.params.depth,
                "slots": self.params.slots,
                "slots_used": self._slots_used(len(flat)),
                "rotation_keys": list(self.published.rotation_steps),
            },
        )
        out = torch.from_numpy(y).float()
        core = self.graph.output
        shape = (len(y), *core.feature_shape)
        out = out.reshape(shape)
        return out.movedim(0, core.batch_dim) if core.batch_dim else out

    def pipeline_spec(self) -> BlockPipeline:
        """What a worker that runs whole blocks needs (``encrypt_on="workers"``): no key, see :class:`BlockPipeline`."""
        if not isinstance(self.plan, BatchPlan):
            raise ParameterError("only mode='batch' runs blocks on workers; wrap with mode='batch'")
        if self._pipeline is None:
            self._pipeline = BlockPipeline(self.params, self.compiled, self.weight_bits, self.published)
        return self._pipeline

    def _run_on_workers(self, flat: np.ndarray) -> tuple[np.ndarray, RunTotals]:
        """Blocks on this program's local workers; evaluate_s is the wall time not spent encrypting or decrypting
        (``encrypt_on="workers"``: each phase's seconds summed over the workers)."""
        if self._engine is None:
            self._engine = LocalEngine(self.workers)
        if self.encrypt_on == "workers":
            return self._run_pipelines(flat, self._engine)
        started = time.perf_counter()
        totals = RunTotals()
        parts: dict[int, np.ndarray] = {}
        for block in self._stream_flat(self.worker_spec(True), flat, self._engine, None):
            parts[block.index] = block.outputs
            totals.encrypt_s += block.encrypt_s
            totals.decrypt_s += block.decrypt_s
            totals.requests += 1
            totals.ciphertexts_in += flat.shape[1]
            totals.ciphertexts_out += block.outputs.shape[1]
            totals.sample_out = block.sample
        totals.evaluate_s = max(0.0, time.perf_counter() - started - totals.encrypt_s - totals.decrypt_s)
        return np.concatenate([parts[i] for i in sorted(parts)]), totals

    def _run_pipelines(self, flat: np.ndarray, engine: Engine) -> tuple[np.ndarray, RunTotals]:
        if not engine.same_host:
            raise ParameterError("encrypt_on='workers' sends plaintext rows: it runs on local workers only")
        totals = RunTotals()
        parts: dict[int, np.ndarray] = {}
        blocks = ((i, flat[rows.start : rows.stop]) for i, rows in enumerate(split(len(flat), self.params.slots)))
        for done in engine.run(self.pipeline_spec(), blocks):
            result: PipelineResult = done.result
            parts[done.index] = result.outputs
            totals.encrypt_s += result.encrypt_s
            totals.evaluate_s += result.evaluate_s
            totals.decrypt_s += result.decrypt_s
            totals.requests += 1
            totals.ciphertexts_in += result.ciphertexts_in
            totals.ciphertexts_out += result.ciphertexts_out
            totals.sample_out_bytes = result.output_bytes
        return np.concatenate([parts[i] for i in sorted(parts)]), totals

    def _packing(self) -> str:
        if not isinstance(self.plan, LatencyPlan):
            return "CryptoNets: ciphertext j holds feature j of up to slots inputs"
        plan, out = self.plan, []
        layout = plan.input_layout
        if layout.gather is not None:
            out.append(f"input in the tap packing ({layout.chunks} ciphertext(s), each slot the input one "
                       "first-layer tap reads)")
        elif layout.chunks > 1:
            out.append(f"input split into {layout.chunks} ciphertexts")
        elif layout.block:
            out.append(f"input blocked (blocks of {layout.block} slots, {layout.width} values each)")
        else:
            out.append(f"input repeated with period {layout.period}")
        diagonals = [sum(len(b) for row in plan.affine[i] for b in row.blocks) for i in sorted(plan.affine)]
        out.append(f"diagonals per affine stage {diagonals}")
        if plan.output_chunks > 1:
            out.append(f"output split into {plan.output_chunks} ciphertexts")
        return "; ".join(out)

    def _slots_used(self, rows: int) -> int:
        if not isinstance(self.plan, LatencyPlan):
            return min(rows, self.params.slots)
        layout = self.plan.input_layout
        if layout.gather is not None:
            return int((layout.gather >= 0).sum())
        if layout.block:  # the blocked packing: every slot of a span does distinct work
            return layout.period * layout.block // layout.width
        return layout.period * layout.chunks

    def layout(self) -> dict[str, Any]:
        """What the server publishes for the client: shapes, packing and parameters, never weights."""
        return self.published.to_json()

    def describe(self) -> dict[str, Any]:
        keys = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in self.key_bytes.items())
        return {
            "backend": "tenseal (CKKS via SEAL)",
            "mode": f"{self.mode}: " + ("one input per ciphertext, diagonal method" if self.mode == "latency"
                                         else "one input per slot (SIMD), one ciphertext per feature"),
            "parameters": self.params.describe(),
            "public key material": keys,
            "rotation keys": str(list(self.published.rotation_steps)) + (
                f" (capped at {len(self.plan.key_steps)}: the other rotations the plan makes are composed of these)"
                if isinstance(self.plan, LatencyPlan) and self.plan.key_steps else ""),
            "depth": f"{self.levels_used} used of {self.params.depth}" + (
                f" (square chain: each affine layer shares its square's rescale, weights at 2^{self.weight_bits}"
                " or finer)" if self.weight_bits else ""),
            "packing": self._packing(),
            "accepted inputs": f"every element in [{self.input_range[0]:.3g}, {self.input_range[1]:.3g}] (others refused)",
            "worst-case output error": (
                f"<= {self.worst_case_error:.3g} for any accepted input: approximations {self.compiled.error_bound:.3g} "
                f"(interval bound) + {NOISE_ALLOWANCE:.0f}x the CKKS noise measured on the sample ({self.noise:.2g})"
                if self.worst_case_error is not None else
                f"approximations <= {self.compiled.error_bound:.3g} (interval bound) + CKKS noise (not measured yet)"),
            "threat model": "semi-honest server; it sees evaluation keys (relinearization, Galois) and ciphertexts only",
            **({"workers": f"{self.workers} local processes; " + (
                "each encrypts, evaluates and decrypts whole blocks under a key pair it makes itself (it gets the "
                "plaintext rows)" if self.encrypt_on == "workers" else
                "they evaluate blocks with the evaluation keys; this process encrypts and decrypts")}
               if self.workers > 1 else {}),
        }


def _check_workers(workers: int, mode: str) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and mode != "batch":
        raise ParameterError("workers > 1 applies to mode='batch' (latency mode evaluates one input at a time)")


def _min_scale_bits(compiled: Compiled) -> int:
    """Fitted activations (Chebyshev series) amplify rounding errors: they get scales of 30 bits or more."""
    return 30 if any(getattr(stage, "fit", None) is not None for stage in compiled.stages) else 25


def _feasible(depth: int, max_out: float, mode: str) -> bool:
    """Whether some 128-bit ring holds a program of ``depth`` rescales (fitted activations, so 30-bit scales)
    with outputs up to ``max_out``."""
    try:
        choose(depth, max_abs_output=max_out, slots_needed=1, min_scale_bits=30)
    except ParameterError:
        return False
    return True


def _conversions(graph: Graph, compiled: Compiled) -> list[Conversion]:
    fitted = {c.path: c for c in compiled.conversions}
    out = []
    for c in RULES.conversions(graph):
        out.append(fitted.get(c.path, c))
    return out


class TensealBackend(Backend):
    name = "tenseal"
    options = frozenset(_OPTIONS)
    rules = RULES

    def model_problems(self, graph: Graph, **options: Any) -> list[UnsupportedModelError]:
        problems = []
        for node in graph.layers():
            try:
                RULES.find(node).rule(node, graph)  # e.g. a product of two encrypted values
            except UnsupportedModelError as exc:
                problems.append(exc)
        return problems

    def build(self, graph: Graph, sample_input: torch.Tensor, **options: Any) -> TensealProgram:
        return TensealProgram(graph, sample_input, **options)


@register_backend("tenseal")
def _factory() -> Backend:
    return TensealBackend()


__all__ = ["MODES", "BlockEvaluator", "BlockResult", "CKKSParameters", "Layout", "LayoutClient", "SecretKeyInContext", "ServerContext", "TensealBackend",
           "TensealProgram", "from_bytes", "galois_element", "screen_tenseal_context", "to_bytes"]
