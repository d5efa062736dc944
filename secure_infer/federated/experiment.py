"""The federated-learning privacy comparison behind ``secure-infer fl``.

One call trains the same model centrally and federated (FedAvg, FedProx, with
SecAgg+, with CrypTen aggregators, with DP-FedAvg at several epsilons), then
attacks what a curious server observes:

* **gradient inversion** of a client's update (DLG, Zhu et al. 2019; and the
  cosine-similarity variant of Geiping et al. 2020), against the plain update,
  the update with DP noise, and the secure aggregate over K clients, scored by
  SSIM/PSNR against the client's real images and against chance (the SSIM of
  unrelated images of the same data set);
* **membership inference** (loss threshold) against each final global model.

It returns a JSON-ready dict; :func:`write_report` adds report.md and plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer._errors import ParameterError, SecureInferError
from secure_infer.datasets import Dataset
from secure_infer.federated.training import (
    DPSettings,
    FederatedConfig,
    FederatedResult,
    noise_for_epsilon,
    replay_fedavg,
    run_federated,
)

__all__ = ["FULL", "QUICK", "FLPlan", "count_steps", "run_experiment", "write_report"]


@dataclass(frozen=True)
class FLPlan:
    """What ``secure-infer fl`` runs. ``QUICK`` fits in a few minutes on 2 cores."""

    name: str = "full"
    clients: int = 10
    rounds: int = 50
    local_epochs: int = 5
    alpha: float | None = 0.5
    model: str = "mlp"
    iid: bool = True
    fedprox: bool = True
    secagg: bool = True
    crypten_rounds: int = 5
    aggregators: int = 2
    dp_epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    dp_rounds: int = 20
    dp_clipping: float = 0.5
    dp_delta: float = 1e-5
    inversion_batches: tuple[int, ...] = (1, 4, 8)
    inversion_methods: tuple[str, ...] = ("dlg", "cosine")
    aggregate_over: int = 10
    inversion_targets: int = 5
    drop: tuple[tuple[int, int], ...] = ((2, 3),)
    seed: int = 0

    @property
    def fraction(self) -> float:
        """Clients per round: all of 10, one in ten of 100 (as cross-device FL samples)."""
        return 1.0 if self.clients <= 20 else max(10 / self.clients, 0.01)


QUICK = FLPlan(name="quick", rounds=20, iid=False, fedprox=False, crypten_rounds=3, dp_epsilons=(8.0,), dp_rounds=10,
               inversion_batches=(1, 4), inversion_methods=("cosine",), inversion_targets=3)
FULL = FLPlan()


def count_steps(plan: FLPlan) -> int:
    """Progress steps :func:`run_experiment` reports: one per training run and attack block."""
    runs = 1 + 1 + plan.iid + plan.fedprox + plan.secagg + (plan.crypten_rounds > 0) + len(plan.dp_epsilons)
    return runs + 2


def configs(plan: FLPlan) -> list[FederatedConfig]:
    """Every federated run the plan asks for, in the order they run."""
    base = FederatedConfig(label="FedAvg", clients=plan.clients, rounds=plan.rounds, fraction=plan.fraction,
                           local_epochs=plan.local_epochs, alpha=plan.alpha, model=plan.model, seed=plan.seed,
                           drop=tuple(d for d in plan.drop if d[0] <= plan.rounds and d[1] < plan.clients))
    out = [base]
    if plan.iid:
        out.append(replace(base, label="FedAvg IID", alpha=None))
    if plan.fedprox:
        out.append(replace(base, label="FedProx", strategy="fedprox"))
    if plan.secagg:
        out.append(replace(base, label="FedAvg + SecAgg+", aggregation="secagg+"))
    if plan.crypten_rounds > 0:
        out.append(replace(base, label=f"FedAvg + CrypTen ({plan.aggregators} aggregators)",
                           aggregation="crypten", aggregators=plan.aggregators,
                           rounds=min(plan.crypten_rounds, plan.rounds),
                           drop=tuple(d for d in base.drop if d[0] <= plan.crypten_rounds)))
    sample_rate = base.clients_per_round / plan.clients
    for eps in plan.dp_epsilons:
        z = noise_for_epsilon(eps, sample_rate, plan.dp_rounds, plan.dp_delta)
        out.append(replace(base, label=f"DP-FedAvg eps<={eps:g}", rounds=plan.dp_rounds,
                           dp=DPSettings(z, plan.dp_clipping, plan.dp_delta),
                           drop=tuple(d for d in base.drop if d[0] <= plan.dp_rounds)))
    return out


def _centralised(plan: FLPlan, data: Dataset) -> dict[str, Any]:
    from secure_infer import zoo

    started = time.perf_counter()
    model = zoo.build(plan.model, data.input_shape, data.num_classes, seed=plan.seed)
    zoo.train(model, data, zoo.default_config(plan.model), seed=plan.seed)
    return {"label": "centralised", "model": model, "accuracy": zoo.accuracy(model, data.x_test, data.y_test),
            "seconds": time.perf_counter() - started}


def _membership(model: torch.nn.Module, data: Dataset, seed: int) -> dict[str, float]:
    from secure_infer.attacks.membership import loss_threshold_attack

    n = min(len(data.x_train), len(data.x_test))
    pick = torch.from_numpy(np.random.default_rng(seed).permutation(len(data.x_train))[:n])
    model.eval()

    def query(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    res = loss_threshold_attack(query, (data.x_train[pick], data.y_train[pick]), (data.x_test[:n], data.y_test[:n]))
    return {"auc": res.auc, "balanced_accuracy": res.balanced_accuracy, "tpr_at_1pct_fpr": res.tpr_at_1pct_fpr}


def _run_summary(result: FederatedResult, central: float) -> dict[str, Any]:
    rounds = result.rounds
    dropped = [(r.round, d) for r in rounds for d in r.dropped]
    agg = [r.aggregation for r in rounds if r.aggregation]
    return {
        "label": result.config.label,
        "accuracy": result.accuracy,
        "delta_vs_centralised": result.accuracy - central,
        "epsilon": result.epsilon,
        "noise_multiplier": result.config.dp.noise_multiplier if result.config.dp else None,
        "rounds": len(rounds),
        "seconds": result.seconds,
        "seconds_per_round": float(np.median([r.seconds for r in rounds])),
        "upload_bytes_per_round": float(np.mean([r.upload_bytes for r in rounds])),
        "download_bytes_per_round": float(np.mean([r.download_bytes for r in rounds])),
        "dropped": [{"round": r, "why": d} for r, d in dropped],
        "accuracy_by_round": [r.accuracy for r in rounds],
        "epsilon_by_round": [r.epsilon for r in rounds],
        "aggregation_cost": _mean_cost(agg) if agg else None,
        "config": asdict(result.config),
    }


def _mean_cost(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def _crypten_check(result: FederatedResult, data: Dataset) -> dict[str, Any]:
    """Largest difference between the CrypTen aggregate and plaintext FedAvg of the same updates, per round."""
    errors = []
    for rnd in range(1, len(result.rounds) + 1):
        expected = replay_fedavg(result, data, rnd)
        got = result.history[rnd]
        errors.append(max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got, strict=True)))
    return {"max_abs_error_by_round": errors, "max_abs_error": max(errors)}


def _inversion(plan: FLPlan, data: Dataset, dp: DPSettings | None, lr: float,
               on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Gradient inversion of client updates, in each view a curious server may have.

    Every row averages ``plan.inversion_targets`` target clients (each attacked in
    turn, the others of the round forming the aggregate), so one easy or hard image
    does not decide it.
    """
    from secure_infer import zoo
    from secure_infer.attacks import gradient_inversion as gi
    from secure_infer.federated.data import partition

    model = zoo.build(plan.model, data.input_shape, data.num_classes, seed=plan.seed)
    model.eval()
    split = partition(data.y_train, max(plan.clients, plan.aggregate_over), alpha=plan.alpha, seed=plan.seed)
    reference = data.x_test[:200]
    rows: list[dict[str, Any]] = []
    grid: list[Any] = []
    largest = max(plan.inversion_batches)
    for batch in plan.inversion_batches:
        shards = [(data.x_train[torch.as_tensor(i[:batch])], data.y_train[torch.as_tensor(i[:batch])])
                  for i in split.indices if len(i) >= batch][: plan.aggregate_over]
        for method in plan.inversion_methods:
            views: list[tuple[str, dict[str, Any], bool]] = [
                ("client update", {}, False),
                (f"secure aggregate of {len(shards)}", {}, True),
            ]
            if dp is not None and batch == plan.inversion_batches[0]:
                # DP-FedAvg clips the update lr * g to C, i.e. the gradient to C / lr, and the
                # noise on the sum is z times that bound.
                bound = dp.clipping_norm / lr
                views.append((f"client update, clipped + DP noise (z={dp.noise_multiplier:.2f})",
                              {"clip_norm": bound, "noise_std": dp.noise_multiplier * bound}, False))
            for view, extra, aggregate in views:
                results = []
                for t in range(min(plan.inversion_targets, len(shards))):
                    if on_note is not None:
                        on_note(f"gradient inversion: {view}, {method}, batch {batch}, target {t + 1}")
                    others = [s for j, s in enumerate(shards) if j != t] if aggregate else []
                    results.append(gi.gradient_inversion_attack(model, *shards[t], others=others, method=method,  # type: ignore[arg-type]
                                                                reference=reference, seed=plan.seed + t, **extra))
                ssim = [r.mean_ssim for r in results]
                rows.append({"view": view, "method": method, "batch": batch, "targets": len(results),
                             "clients_in_view": results[0].clients_in_view,
                             "mean_ssim": float(np.mean(ssim)), "min_ssim": float(np.min(ssim)),
                             "max_ssim": float(np.max(ssim)),
                             "mean_psnr": float(np.mean([r.mean_psnr for r in results])),
                             "chance_ssim": float(np.mean([r.chance_ssim for r in results])),
                             "label_accuracy": float(np.mean([r.label_accuracy for r in results])),
                             "seconds": float(np.sum([r.seconds for r in results]))})
                first_view = batch == plan.inversion_batches[0] and method == plan.inversion_methods[0]
                if first_view or (batch == largest and method == plan.inversion_methods[0] and not extra):
                    grid.append(results[0])
    return {"rows": rows, "grid_results": grid,
            "note": ("the update of one local SGD step on the client's batch (FedSGD) from the initial global "
                     f"model, averaged over {plan.inversion_targets} target clients per row; labels recovered "
                     "from the last layer's gradient")}


def run_experiment(plan: FLPlan, data: Dataset, *, on_step: Callable[[str], None] | None = None,
                   on_round: Callable[[str, int, int, float], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and attack per ``plan`` on ``data``; returns the report as a dict (plus live objects under ``_``).

    ``on_step`` is called as each step starts (progress bars count them), ``on_round``
    after every training round, ``on_note`` with what a long step is doing.
    """
    if data.synthetic:
        raise ParameterError(f"{data.label}: the federated comparison needs a real data set")
    started = time.perf_counter()

    def step(text: str) -> None:
        if on_step is not None:
            on_step(text)

    step("centralised training")
    central = _centralised(plan, data)
    planned = configs(plan)
    # The attacks on updates need no trained model (they target round 1), so they run
    # first: a failure in a long training run then loses nothing measured before it.
    step("gradient inversion")
    dp_planned = [c.dp for c in planned if c.dp is not None]
    dp_for_attack = min(dp_planned, key=lambda d: d.noise_multiplier) if dp_planned else None
    inversion = _inversion(plan, data, dp_for_attack, planned[0].lr, on_note)
    runs: list[dict[str, Any]] = []
    results: dict[str, FederatedResult] = {}
    crypten_check = None
    for config in planned:
        step(config.label)

        def round_done(rec: Any, label: str = config.label, total: int = config.rounds) -> None:
            if on_round is not None:
                on_round(label, rec.round, total, rec.accuracy)

        try:
            result = run_federated(config, data, on_round=round_done)
        except SecureInferError as exc:  # reported as a row; the other configurations still run
            runs.append({"label": config.label, "error": str(exc), "config": asdict(config)})
            continue
        results[config.label] = result
        runs.append(_run_summary(result, central["accuracy"]))
        if config.aggregation == "crypten":
            crypten_check = _crypten_check(result, data)
            runs[-1]["crypten_vs_plaintext"] = crypten_check
    step("membership inference")
    membership = [{"label": "centralised", **_membership(central["model"], data, plan.seed)}]
    membership += [{"label": label, **_membership(r.model, data, plan.seed)} for label, r in results.items()]
    report: dict[str, Any] = {
        "plan": asdict(plan),
        "dataset": data.description or data.name,
        "centralised": {k: v for k, v in central.items() if k != "model"},
        "runs": runs,
        "crypten_check": crypten_check,
        "inversion": {k: v for k, v in inversion.items() if k != "grid_results"},
        "membership": membership,
        "seconds": 0.0,
        "_": {"inversion_results": inversion["grid_results"], "results": results},
    }
    report["seconds"] = time.perf_counter() - started
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the plots into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    live = report.get("_", {})
    public = {k: v for k, v in report.items() if k != "_"}
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(public, indent=2, default=str))
    plan = report["plan"]
    central = report["centralised"]["accuracy"]
    lines = [
        f"# secure-infer federated learning ({plan['name']})", "",
        f"{report['dataset']}; {plan['clients']} clients, "
        + ("IID" if plan["alpha"] is None else f"non-IID Dirichlet alpha={plan['alpha']}")
        + f"; model {plan['model']}; {plan['local_epochs']} local epochs per round; seed {plan['seed']}. "
        f"Centralised training of the same model: accuracy {central:.4f}.", "",
        "## Training", "",
        "| configuration | rounds | accuracy | vs centralised | epsilon (delta) | s/round | "
        "upload bytes/round | dropped clients |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['label']} | - | failed: {r['error'].splitlines()[0]} ||||||")
            continue
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f} ({plan['dp_delta']:g}), z={r['noise_multiplier']:.2f}"
        drops = "; ".join(f"round {d['round']}: {d['why']}" for d in r["dropped"]) or "none"
        lines.append(f"| {r['label']} | {r['rounds']} | {r['accuracy']:.4f} | {r['delta_vs_centralised']:+.4f} | "
                     f"{eps} | {_fmt(r['seconds_per_round'])} | {_fmt(r['upload_bytes_per_round'])} | {drops} |")
    if plan["clients"] > 20:
        lines += ["", f"Each round Flower samples {FLPlan(clients=plan['clients']).fraction:.0%} of the clients "
                  "at random (its client manager does not take a seed), so at this size two rows also differ "
                  "by which clients trained when; with 10 clients every client trains every round."]
    lines += ["", "Dropped clients are left out of that round's average (FedAvg over the survivors; SecAgg+ "
              "removes their masks from their neighbours' key shares; CrypTen aggregators exclude them), never "
              "counted as zeros. Bytes are the payload of every message a client sent in a round (all SecAgg+ "
              "stages included), summed over clients."]
    done = [r for r in report["runs"] if "error" not in r]
    cost_rows = [r for r in done if r.get("aggregation_cost") or r["config"]["aggregation"] != "plain"]
    if cost_rows:
        lines += ["", "## Secure aggregation cost per round", "",
                  "| configuration | s/round | client upload bytes/round | aggregator bytes sent/party | "
                  "aggregator seconds | max abs error vs plaintext FedAvg |", "|---|---|---|---|---|---|"]
        for r in cost_rows:
            cost = r.get("aggregation_cost") or {}
            check = r.get("crypten_vs_plaintext") or {}
            lines.append(f"| {r['label']} | {_fmt(r['seconds_per_round'])} | {_fmt(r['upload_bytes_per_round'])} | "
                         f"{_fmt(cost.get('bytes_per_party'))} | {_fmt(cost.get('seconds'))} | "
                         f"{_fmt(check.get('max_abs_error'))} |")
    inv = report["inversion"]
    lines += ["", "## Gradient inversion of a client's update", "", f"What is inverted: {inv['note']}. "
              "Chance: SSIM between the client's images and unrelated images of the same data set.", "",
              "| view | method | batch | clients in view | mean SSIM (min-max over targets) | mean PSNR dB | "
              "chance SSIM | labels right |",
              "|---|---|---|---|---|---|---|---|"]
    for r in inv["rows"]:
        lines.append(f"| {r['view']} | {r['method']} | {r['batch']} | {r['clients_in_view']} | {r['mean_ssim']:.3f} "
                     f"({r['min_ssim']:.2f}-{r['max_ssim']:.2f}) | {r['mean_psnr']:.1f} | {r['chance_ssim']:.3f} | "
                     f"{r['label_accuracy']:.2f} |")
    lines += ["", "## Membership inference against the final global model (loss threshold)", "",
              "| model | AUC | balanced accuracy | TPR at 1% FPR |", "|---|---|---|---|"]
    for m in report["membership"]:
        lines.append(f"| {m['label']} | {m['auc']:.3f} | {m['balanced_accuracy']:.3f} | {m['tpr_at_1pct_fpr']:.3f} |")
    flag = "--quick" if plan["name"] == "quick" else ""
    lines += ["", f"Measured in {report['seconds']:.0f} s. Regenerate: `secure-infer fl {flag} "
              f"--clients {plan['clients']} --out DIR`.".replace("  ", " "), ""]
    plots = _plots(report, live, out)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    paths[1].write_text("\n".join(lines) + "\n")
    return paths + plots


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plots(report: dict[str, Any], live: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    central = report["centralised"]["accuracy"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["runs"]:
        if "error" in r:
            continue
        acc = r["accuracy_by_round"]
        ax.plot(range(1, len(acc) + 1), acc, label=r["label"], marker="." if len(acc) < 10 else None)
    ax.axhline(central, color="black", linestyle="--", label="centralised")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs round")
    ax.legend(fontsize=7)
    written.append(_save(plt, fig, out / "accuracy_vs_round.png"))

    dp = [r for r in report["runs"] if r.get("epsilon") is not None]
    if dp:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([r["epsilon"] for r in dp], [r["accuracy"] for r in dp], marker="o", label="DP-FedAvg")
        plain = next((r for r in report["runs"] if r["label"] == "FedAvg" and "error" not in r), None)
        if plain is not None:
            ax.axhline(plain["accuracy"], color="tab:green", linestyle=":", label="FedAvg (no DP)")
        ax.axhline(central, color="black", linestyle="--", label="centralised")
        ax.set_xscale("log")
        ax.set_xlabel("client-level epsilon (RDP accountant)")
        ax.set_ylabel("test accuracy")
        ax.set_title("epsilon vs accuracy")
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, out / "epsilon_vs_accuracy.png"))

    results = live.get("inversion_results") or []
    if results:
        from secure_infer.attacks.gradient_inversion import reconstruction_grid

        written.append(reconstruction_grid(results, out / "reconstructions.png"))
    return written
