"""Every attack against every way of serving one victim, side by side (``secure-infer attack``).

Rows are serving configurations: plaintext with full confidences, the same
under a per-client query budget (what ``secure-infer serve --state``
enforces: a capped attacker gets only so many answers), label-only and
rounded outputs, the same model served through CrypTen (2 real parties) and
TenSEAL (CKKS), and DP-SGD-trained models. Columns are what the attacks
measured through each row's query interface. Encryption protects the *input*
(the input-privacy column); output-based attacks see the same outputs
whether or not the input was encrypted, and the table shows that rather than
implying protection.

Who holds what (digits, seeded): the victim trains on ``members`` training
examples (deliberately overfit); ``non_members`` other training examples are
the attack's negatives; the rest of the training split is the attacker's own
pool (shadow models, extraction queries); the test split scores accuracy.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer import datasets
from secure_infer._output import TextTable
from secure_infer.attacks import defences
from secure_infer.attacks.dp import train_dp
from secure_infer.attacks.extraction import ExtractionPoint, extraction_attack
from secure_infer.attacks.input_privacy import (
    InputPrivacyResult,
    attack_view,
    ciphertext_view,
    plaintext_view,
    share_view,
)
from secure_infer.attacks.inversion import InversionResult, inversion_attack
from secure_infer.attacks.membership import (
    MembershipResult,
    Query,
    ShadowModels,
    attack_split,
    lira_offline,
    loss_threshold_attack,
    shadow_model_attack,
    victim_trainer,
)


@dataclass(frozen=True)
class SuiteConfig:
    """What to run; ``QUICK`` and ``FULL`` are the presets."""

    members: int = 100
    non_members: int = 250
    epochs: int = 300
    shadows: int = 8
    budgets: tuple[int, ...] = (50, 100, 200, 400, 800)
    inversion_steps: int = 30
    dp_epsilons: tuple[float, ...] = (1.0, 8.0)
    backends: tuple[str, ...] = ("crypten", "tenseal")
    privacy_inputs: int = 300
    tenseal_degree: int = 7  # every query batch evaluates the polynomials once per hidden unit: kept cheap
    budget_caps: tuple[int, ...] = (200, 50)  # a plaintext row per cap: inputs answered per client, then refusals
    seed: int = 0


QUICK = SuiteConfig(shadows=4, budgets=(50, 200, 800), dp_epsilons=(8.0,))
FULL = SuiteConfig()


@dataclass
class ServingRow:
    """One serving configuration and what every attack measured through it."""

    name: str
    accuracy: float
    membership: dict[str, MembershipResult]
    extraction: list[ExtractionPoint]
    inversion: InversionResult
    input_privacy: InputPrivacyResult
    note: str = ""
    budget: int | None = None  # inputs each attack (one client) was answered before refusals; None: unlimited

    @property
    def best_mia(self) -> MembershipResult:
        return max(self.membership.values(), key=lambda r: r.auc)


@dataclass
class AttackReport:
    """The whole suite's results, with how and where they were measured."""

    config: SuiteConfig
    rows: list[ServingRow]
    extraction_labels: list[ExtractionPoint]  # plaintext, top-1 labels only (vs the confidences row)
    dp: list[dict[str, float]]
    seconds: float
    environment: dict[str, str] = field(default_factory=dict)


def count_steps(config: SuiteConfig) -> int:
    """How many times :func:`run_suite` calls ``on_step`` with ``config`` (sizes a progress bar).

    Victim, shadow models and the plaintext input-privacy view; three attacks on
    each of the three plaintext rows and each budget row; extraction from
    labels; per encrypted backend its input-privacy view and three attacks;
    per DP epsilon the training and three attacks.
    """
    backends = sum(b in ("crypten", "tenseal") for b in config.backends)
    return 3 + 3 * (3 + len(config.budget_caps)) + 1 + 4 * backends + 4 * len(config.dp_epsilons)


def _accuracy(query: Query, x: torch.Tensor, y: torch.Tensor) -> float:
    from secure_infer.attacks.membership import _outputs

    return float((_outputs(query, x).argmax(1) == y).float().mean())


def run_suite(config: SuiteConfig = QUICK, *, on_step: Callable[[str], None] | None = None) -> AttackReport:
    """Train the victim, build each serving configuration, run every attack through it."""
    from secure_infer.zoo import build

    started = time.perf_counter()
    step = on_step or (lambda _msg: None)
    data = datasets.load_digits(seed=config.seed)
    m = config.members
    members, non_members, pool = attack_split(data, m, config.non_members, seed=config.seed)
    trainer = victim_trainer(data, epochs=config.epochs)
    step("train the victim (overfit MLP)")
    victim = trainer(*members, config.seed)
    step(f"train {config.shadows} shadow models on the attacker's pool")
    shadows = ShadowModels.train(pool, trainer, count=config.shadows, size=m, seed=config.seed + 100)
    with torch.no_grad():
        victim_on_test = victim(data.x_test)

    def surrogate() -> torch.nn.Module:
        return build("mlp", data.input_shape, data.num_classes, seed=config.seed + 7)

    n_priv = min(config.privacy_inputs, len(data.x_test))
    priv_x, priv_y = data.x_test[:n_priv], data.y_test[:n_priv].numpy()
    priv_inputs = priv_x.reshape(n_priv, -1).numpy()
    step("input privacy: plaintext view")
    plain_view = attack_view("the input (plaintext)", plaintext_view(priv_x), priv_y, priv_inputs, seed=config.seed)

    def attack_row(name: str, query: Query, privacy: InputPrivacyResult, note: str = "",
                   served_model: torch.nn.Module | None = None, budget: int | None = None) -> ServingRow:
        """``served_model``: the model being stolen, when it is not the victim (DP rows).

        ``budget``: each attack is a fresh client answered that many inputs,
        then refused. The three membership attacks ask about the candidates in
        the same order, so they read the answers one such client would get.
        Test accuracy is the operator's measurement, outside any budget.
        """
        def client() -> Query:
            return query if budget is None else defences.budgeted(query, budget)

        reference = victim_on_test
        if served_model is not None:
            with torch.no_grad():
                reference = served_model(data.x_test)
        step(f"{name}: membership inference")
        mia = {
            "loss": loss_threshold_attack(client(), members, non_members, seed=config.seed),
            "shadow": shadow_model_attack(client(), members, non_members, shadows, seed=config.seed),
            "lira": lira_offline(client(), members, non_members, shadows, seed=config.seed),
        }
        step(f"{name}: extraction")
        extraction = extraction_attack(client(), pool[0], budgets=config.budgets, victim_on_eval=reference,
                                       eval_x=data.x_test, eval_y=data.y_test, build=surrogate, seed=config.seed)
        step(f"{name}: inversion")
        inversion = inversion_attack(client(), data.x_train, data.y_train, classes=data.num_classes,
                                     steps=config.inversion_steps)
        return ServingRow(name, _accuracy(query, data.x_test, data.y_test), mia, extraction, inversion, privacy, note,
                          budget)

    rows = [attack_row("plaintext, full confidences", victim, plain_view)]
    rows += [attack_row(f"plaintext, full confidences, budget {cap} inputs", victim, plain_view, budget=cap)
             for cap in config.budget_caps]
    rows += [
        attack_row("plaintext, top-1 label only", defences.label_only(victim), plain_view),
        attack_row("plaintext, confidences rounded to 0.1", defences.rounded(victim, 1), plain_view),
    ]
    step("plaintext: extraction from labels only")
    extraction_labels = extraction_attack(victim, pool[0], budgets=config.budgets, victim_on_eval=victim_on_test,
                                          eval_x=data.x_test, eval_y=data.y_test, build=surrogate,
                                          answers="labels", seed=config.seed)
    sample = data.x_test[:1]
    if "crypten" in config.backends:
        import secure_infer as si

        step("CrypTen: input privacy (party 0's shares)")
        view = attack_view("party 0's shares (CrypTen)", share_view(priv_x), priv_y, priv_inputs, seed=config.seed)
        with si.wrap(victim, "crypten", sample_input=sample, parties=2) as enc:
            rows.append(attack_row("CrypTen, 2 parties, full confidences", enc, view,
                                   "outputs opened to the querier as in plaintext serving"))
    if "tenseal" in config.backends:
        import secure_infer as si
        from secure_infer.backends.tenseal import TensealProgram

        step("TenSEAL: input privacy (ciphertext bytes)")
        view = attack_view("ciphertext bytes (TenSEAL)", ciphertext_view(victim, priv_x, sample), priv_y,
                           priv_inputs, seed=config.seed)
        enc = si.wrap(victim, "tenseal", sample_input=sample, mode="batch", calibration=data.x_train,
                      poly_degree=config.tenseal_degree)
        approximated = [c for c in enc.report().conversions if c.kind == "approximated"]
        assert isinstance(enc.program, TensealProgram)  # what wrap(..., "tenseal") builds
        note = (f"ReLU replaced by degree-{config.tenseal_degree} polynomials fitted on the range every accepted input "
                f"can reach; worst-case logit error {enc.program.worst_case_error:.3g}") if approximated else ""
        rows.append(attack_row("TenSEAL CKKS (batch), full confidences", enc, view, note))
    dp_rows = []
    for epsilon in config.dp_epsilons:
        step(f"DP-SGD, target epsilon {epsilon:g}")
        trained = train_dp(data, *members, target_epsilon=epsilon, seed=config.seed)
        dp_rows.append({"target_epsilon": epsilon, "epsilon": trained.epsilon, "delta": trained.delta,
                        "noise_multiplier": trained.noise_multiplier, "max_grad_norm": trained.max_grad_norm,
                        "epochs": trained.epochs})
        rows.append(attack_row(f"DP-SGD (epsilon {trained.epsilon:.2g}, delta {trained.delta:.0e}), full confidences",
                               trained.model, plain_view, "Opacus RDP accountant; extraction agreement is with this DP "
                               "model, the one served", served_model=trained.model))
    from importlib.metadata import version

    env = {"python": platform.python_version(), "torch": torch.__version__, "opacus": version("opacus"),
           "tenseal": version("tenseal"), "crypten": version("crypten"), "cpu": platform.machine(),
           "date": time.strftime("%Y-%m-%d")}
    return AttackReport(config, rows, extraction_labels, dp_rows, time.perf_counter() - started, env)


def _fmt_extraction(points: list[ExtractionPoint], budgets: tuple[int, ...] = ()) -> str:
    """Agreement per budget; with the configured ``budgets``, those a cap refused read "refused" and a
    point at a cap that is not one of them reads "agreement @ cap"."""
    by_budget = {p.budget: p for p in points}
    cells = []
    for b in sorted(set(budgets) | set(by_budget)):
        if b not in by_budget:
            cells.append("refused")
        else:
            cells.append(f"{by_budget[b].agreement:.2f}" + ("" if not budgets or b in budgets else f" @ {b}"))
    return " / ".join(cells)


def summary(report: AttackReport) -> str:
    """One paragraph: who the victim is, what membership is tested against, how long the suite took."""
    cfg = report.config
    return (f"Victim: zoo MLP trained {cfg.epochs} epochs on {cfg.members} digits examples (deliberately overfit); "
            f"membership is tested on those {cfg.members} against {cfg.non_members} other training examples; the "
            f"attacker's own pool is the rest of the training split ({cfg.shadows} shadow models). "
            f"Suite time {report.seconds:.0f} s on this machine.")


def table(report: AttackReport) -> TextTable:
    """The attack table (a row per serving configuration) with its notes, for the terminal and for Markdown."""
    cfg = report.config
    budgets = "/".join(str(b) for b in cfg.budgets)
    out = TextTable("Attack resistance: every attack through every way of serving")
    for name in ("serving", "test acc", "MIA AUC loss / shadow / LiRA", "TPR@1% FPR (best attack)",
                 "TPR@0.1% FPR (best attack)", f"extraction agreement @ {budgets} queries",
                 "inversion SSIM (MSE), classes identified", "what the server sees",
                 "input-privacy attack acc (chance; z)"):
        out.add_column(name)
    for row in report.rows:
        mia = row.membership
        out.add_row(
            row.name, f"{row.accuracy:.3f}", f"{mia['loss'].auc:.3f} / {mia['shadow'].auc:.3f} / {mia['lira'].auc:.3f}",
            f"{max(r.tpr_at_1pct_fpr for r in mia.values()):.3f}", f"{max(r.tpr_at_01pct_fpr for r in mia.values()):.3f}",
            _fmt_extraction(row.extraction, cfg.budgets),
            f"{row.inversion.mean_ssim:.3f} ({row.inversion.mean_mse:.4f}), {row.inversion.identified:.1f}",
            row.input_privacy.view,
            f"{row.input_privacy.accuracy:.3f} ({row.input_privacy.chance:.3f}; {row.input_privacy.z_above_chance:+.1f})",
        )
    out.notes = _notes(report)
    return out


def _notes(report: AttackReport) -> list[str]:
    cfg = report.config
    budgets = "/".join(str(b) for b in cfg.budgets)
    first = report.rows[0].inversion
    lines = [
        f"- Extraction from top-1 labels only (plaintext): agreement {_fmt_extraction(report.extraction_labels)} "
        f"at {budgets} queries, against {_fmt_extraction(report.rows[0].extraction)} with full confidences.",
        f"- Inversion baseline (no attack: the average training image): SSIM {first.baseline_ssim:.3f}, "
        f"MSE {first.baseline_mse:.4f}; {first.queries} queries per row; chance of identifying a class is "
        f"{1 / len(first.ssim):.1f}.",
        f"- Low-FPR resolution: with {cfg.non_members} non-members the smallest non-zero FPR is "
        f"{1 / cfg.non_members:.4f}, so TPR@0.1% FPR is the TPR at zero false positives.",
        "- Input privacy: held-out accuracy of the best of logistic regression / random forest / k-NN trained on "
        "what the server observed, predicting the client's label; chance is the majority-class rate; z is how "
        f"many binomial standard errors the accuracy lies above chance on the {report.rows[0].input_privacy.held_out} "
        "held-out inputs (|z| below about 3 is no detectable signal). "
        "Reconstruction R^2 of the input from the view: "
        + ", ".join(f"{r.input_privacy.view} {r.input_privacy.reconstruction_r2:.2f}"
                    for r in _unique_views(report.rows)) + ".",
        "- Encrypted rows (CrypTen, TenSEAL) protect the input, not the output: the querier sees the same outputs, "
        "so membership, extraction and inversion find what they find in plaintext serving. CrypTen's fixed-point "
        "outputs match plaintext to about 1e-3; TenSEAL serves a polynomial approximation of the model, whose "
        "outputs differ more, which also makes the attacker's plaintext-trained shadow models a worse match: "
        "lower numbers in that row come from the approximation, not from the encryption.",
    ]
    lines += _budget_notes(report)
    for row in report.rows:
        if row.note:
            lines.append(f"- {row.name}: {row.note}.")
    return lines


def _budget_notes(report: AttackReport) -> list[str]:
    """What the budget rows measured: how a capped attack is scored, then per row where each attack stopped."""
    capped = [row for row in report.rows if row.budget is not None]
    if not capped:
        return []
    cfg = report.config
    images = capped[0].inversion.images
    per_step = 2 * int(np.prod(images.shape[1:])) * images.shape[0]  # finite differences, every class, one step
    lines = [
        "- Budget rows (plaintext, full confidences, budget N inputs): each attack is one client that is answered "
        "N inputs and then refused (\"budget-exhausted\"), as `secure-infer serve --state` refuses a client "
        "registered with `secure-infer clients add NAME --budget N`; a request that would go over is refused whole. "
        "Extraction keeps the answers it got: \"refused\" marks the budgets past the cap, and the last figure is "
        "the fidelity at the cap. Membership: the attacker cannot tell members from non-members, so it asks about "
        "the candidates in a random order and scores those it reaches; every candidate it never reached gets the "
        "same \"don't know\" score, the median of the scores it obtained. AUC and TPRs are over all candidates, so "
        "they fall towards chance as the share reached falls, while the candidates it did reach are ranked as well "
        "as without a budget (the AUC among them, below). Test accuracy is the operator's measurement, outside any "
        f"budget. Inversion needs {per_step} queries per gradient step ({images.shape[0]} classes x 2 x "
        f"{int(np.prod(images.shape[1:]))} pixels)."
    ]
    for row in capped:
        mia = row.membership
        loss = mia["loss"]
        among = " / ".join("n/a" if r.auc_queried is None else f"{r.auc_queried:.3f}"
                           for r in (mia["loss"], mia["shadow"], mia["lira"]))
        last = row.extraction[-1] if row.extraction else None
        steps = row.inversion.queries // per_step if per_step else 0
        lines.append(
            f"- {row.name}: membership reached {loss.queried} of {loss.members + loss.non_members} candidates "
            f"(coverage {loss.coverage:.2f}), AUC among them loss / shadow / LiRA {among}; extraction "
            + (f"stopped at {last.budget} of {max(cfg.budgets)} planned queries (agreement {last.agreement:.2f})"
               if last else "got no answer")
            + f"; inversion {steps} of {cfg.inversion_steps} steps"
            + (" (its cell is the starting image, the average training image)." if steps == 0 else "."))
    return lines


def markdown(report: AttackReport) -> str:
    """The attack table and notes, as Markdown (report.md, also appended to the bench report)."""
    attacks = table(report)
    lines = ["## Attack resistance", "", summary(report), "", attacks.markdown(aligned=False), "", *attacks.notes]
    return "\n".join(lines) + "\n"


def _unique_views(rows: list[ServingRow]) -> list[ServingRow]:
    seen, out = set(), []
    for row in rows:
        if row.input_privacy.view not in seen:
            seen.add(row.input_privacy.view)
            out.append(row)
    return out


def to_json(report: AttackReport) -> dict[str, Any]:
    def mia(r: MembershipResult) -> dict[str, Any]:
        return {k: v for k, v in asdict(r).items() if k not in ("scores", "is_member")}

    return {
        "config": asdict(report.config), "seconds": report.seconds, "environment": report.environment,
        "dp": report.dp, "extraction_labels_only": [asdict(p) for p in report.extraction_labels],
        "rows": [{
            "name": r.name, "accuracy": r.accuracy, "note": r.note, "budget": r.budget,
            "membership": {k: {**mia(v), "coverage": v.coverage} for k, v in r.membership.items()},
            "extraction": [asdict(p) for p in r.extraction],
            "inversion": {"mse": r.inversion.mse, "ssim": r.inversion.ssim, "identified": r.inversion.identified,
                          "queries": r.inversion.queries, "baseline_ssim": r.inversion.baseline_ssim,
                          "baseline_mse": r.inversion.baseline_mse},
            "input_privacy": asdict(r.input_privacy),
        } for r in report.rows],
    }


def write_report(report: AttackReport, out: Path) -> list[Path]:
    """report.md, report.json and plots (ROC curves, extraction vs budget, inversions) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key in zip(axes, ("loss", "shadow", "lira"), strict=True):
        for row in report.rows:
            r = row.membership[key]
            fpr, tpr, _ = roc_curve(r.is_member, r.scores)
            ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{row.name} (AUC {r.auc:.2f})")
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"membership: {report.rows[0].membership[key].attack}")
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "mia_roc.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in report.rows:
        ax.plot([p.budget for p in row.extraction], [p.agreement for p in row.extraction], marker="o", label=row.name)
    ax.plot([p.budget for p in report.extraction_labels], [p.agreement for p in report.extraction_labels],
            "k--", marker="x", label="plaintext, attacker keeps labels only")
    ax.set_xscale("log")
    ax.set_xlabel("queries")
    ax.set_ylabel("surrogate agreement with the victim")
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "extraction.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    rows = [report.rows[0].inversion.class_means] + [r.inversion.images for r in report.rows]
    names = ["true class means"] + [r.name for r in report.rows]
    fig, axes = plt.subplots(len(rows), rows[0].shape[0], figsize=(rows[0].shape[0] * 0.9, len(rows) * 1.0))
    for i, (images, name) in enumerate(zip(rows, names, strict=True)):
        for c in range(images.shape[0]):
            axes[i, c].imshow(images[c], cmap="gray")
            axes[i, c].set_xticks([])
            axes[i, c].set_yticks([])
        axes[i, 0].set_ylabel(name[:22], fontsize=5, rotation=0, ha="right")
    fig.tight_layout()
    paths.append(out / "inversion.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    md = out / "report.md"
    md.write_text("# secure-infer attack report\n\n" + markdown(report)
                  + "\n![ROC](mia_roc.png)\n![extraction](extraction.png)\n![inversion](inversion.png)\n")
    js = out / "report.json"
    js.write_text(json.dumps(to_json(report), indent=2))
    return [md, js, *paths]
