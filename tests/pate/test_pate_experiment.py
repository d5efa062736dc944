"""secure-infer pate: the whole comparison on a small plan, and its report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from secure_infer import ParameterError, datasets
from secure_infer.cli import app
from secure_infer.pate import experiment
from secure_infer.pate.teachers import TeacherConfig

SMALL = dataclasses.replace(experiment.QUICK, name="test", teachers=30, teacher=TeacherConfig(steps=150), queries=120,
                            public=200,
                            curve_points=2, noise_draws=3, mpc_queries=40, student_epochs=40, dp_epsilons=(8.0,),
                            attack_shadows=2, attack_teachers=10, attack_seeds=(0, 1), attack_noise=(1.0, 2.0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    steps: list[str] = []
    report = experiment.run_pate(SMALL, on_step=steps.append)
    out = tmp_path_factory.mktemp("pate")
    return report, steps, experiment.write_report(report, out)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_part_is_measured(run):
    report, steps, _ = run
    assert len(steps) == experiment.count_steps(SMALL)
    confident, gnmax = report["rows"]
    assert gnmax["answered"] == gnmax["queries"] == SMALL.queries
    assert 0 < confident["answered"] < confident["queries"]
    for row in report["rows"]:
        assert 0 < row["epsilon"] <= row["epsilon_data_independent"]
        # the labels are post-processing of a silo's view: never worse for the student than for a silo
        assert row["epsilon"] <= row["epsilon_silo"] + 1e-9
        # the published figure pays for its own release: above the unpublishable one on average
        assert row["epsilon_published_std"] >= 0 and row["smooth_sensitivity"] >= 0
        assert row["epsilon_published"] + 3 * row["epsilon_published_std"] > row["epsilon"]
        assert 0.0 <= row["accuracy"] <= 1.0
    # the student learned something from the noisy answers
    assert confident["accuracy"] > 0.5
    # the student sees 200 public inputs, asks about the first 120; the rest of the test split scores it
    assert report["public_inputs"] == 200 and report["eval_examples"] == 450 - 200
    draws = report["noise_draws"]
    assert [d["seed"] for d in draws] == list(range(SMALL.seed, SMALL.seed + SMALL.noise_draws))
    # the first draw is the headline row's own noise: same answers, same epsilon, same student
    assert draws[0]["answered"] == confident["answered"]
    assert draws[0]["epsilon"] == pytest.approx(confident["epsilon"])
    assert draws[0]["accuracy"] == pytest.approx(confident["accuracy"])
    assert len({d["answered"] for d in draws}) > 1 or len({d["epsilon"] for d in draws}) > 1  # other noise, other run
    # the same student on true labels: as many random public inputs as were answered, then all of them
    ref = report["label_reference"]
    # paired draw by draw: each random-label student gets as many true labels as that draw's answers
    assert [(p["seed"], p["labels"], p["pate_accuracy"]) for p in ref["random"]] == [
        (d["seed"], d["answered"], d["accuracy"]) for d in draws if d["accuracy"] is not None]
    assert all(0.3 < p["accuracy"] <= 1.0 for p in ref["random"])  # far above chance (0.1): it learned
    assert ref["gap_mean"] == pytest.approx(np.mean([p["pate_accuracy"] - p["accuracy"] for p in ref["random"]]))
    assert ref["gap_standard_error"] > 0
    assert ref["all_public"] == SMALL.queries and ref["all_public_accuracy"] > 0.8
    assert all(0.5 < d["label_accuracy"] <= 1.0 for d in draws)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mpc_silos_answer_as_the_plaintext_aggregator(run):
    report, _, _ = run
    mpc = report["mpc"]
    assert "error" not in mpc, mpc.get("error")
    assert mpc["parties"] == 3 and mpc["queries"] == SMALL.mpc_queries
    assert mpc["agree"] == mpc["queries"] == mpc["agree_with_student_labels"]
    assert mpc["seconds_per_query"] > 0 and mpc["bytes_per_query"] > 0 and mpc["rounds_per_query"] > 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_curve_dp_sgd_and_attacks(run):
    report, _, _ = run
    eps = [c["epsilon"] for c in report["curve"]]
    assert eps == sorted(eps) and len(eps) == SMALL.curve_points
    reference, dp = report["dp_sgd"]
    assert reference["target_epsilon"] is None and reference["accuracy"] > 0.9
    assert 0 < dp["epsilon"] <= 8.0 and dp["accuracy"] > 0.8
    attacks = report["attacks"]
    rows = {r["model"].split(" (")[0]: r for r in attacks["rows"]}  # the last PATE student stands for all
    assert set(rows) == {"non-private victim", "DP-SGD", "PATE student"}
    victim = rows["non-private victim"]
    assert victim["loss_auc"] > 0.6  # the overfit victim leaks, so the setting can show a difference
    assert [r["seeds"] for r in rows.values()] == [len(SMALL.attack_seeds)] * 3
    students = [r for r in attacks["rows"] if r["model"].startswith("PATE student")]
    assert len(students) == len(SMALL.attack_noise)
    assert students[0]["epsilon"] > students[1]["epsilon"] > 0  # more noise, less epsilon
    for r in rows.values():
        if r["attacked"]:
            assert 0.0 <= r["lira_auc"] <= 1.0
            assert r["loss_auc"] == pytest.approx(np.mean([x["loss_auc"] for x in r["runs"] if "error" not in x]))
    assert attacks["chance_sd_of_mean"] < attacks["chance_sd"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_report_files(run):
    report, _, paths = run
    assert [p.name for p in paths] == ["report.json", "report.md", "accuracy_vs_epsilon.png"]
    assert json.loads(paths[0].read_text())["nonprivate_accuracy"] == pytest.approx(report["nonprivate_accuracy"])
    text = paths[1].read_text()
    for heading in ("## Student", "### What the answers are worth", "## The vote counted under MPC", "## DP-SGD",
                    "## Membership inference"):
        assert heading in text
    assert "published (smooth sensitivity)" in text
    assert "the first 200 test inputs, unlabelled; the student asks about the first 120" in text
    assert "The student is zoo `mlp`, 40 epochs" in text and "zoo `mlp`, 100 epochs on the private split" in text
    assert paths[2].stat().st_size > 1000


@pytest.mark.slow
def test_the_report_says_where_the_aggregator_settings_came_from(run, tmp_path):
    report, _, paths = run
    assert "chosen on this split with the public inputs' true labels" in paths[1].read_text()
    fixed = {**report, "plan": {**report["plan"], "aggregator_from": "the paper's (T=200)"}}
    text = experiment.write_report(fixed, tmp_path / "fixed")[1].read_text()
    assert "settings are the paper's (T=200), fixed before this run saw the data" in text
    assert "with the public inputs' true labels" not in text and "release settings were chosen on this split" in text
    text = experiment.write_report({**fixed, "dataset_name": "mnist"}, tmp_path / "mnist")[1].read_text()
    assert "release settings were chosen on a digits split, not on this data" in text


def test_the_report_compares_the_student_nearest_the_main_epsilon_with_chance():
    def row(model, eps, loss, lira, accuracy=0.2):
        return {"model": model, "epsilon": eps, "attacked": 4, "loss_auc": loss, "lira_auc": lira, "accuracy": accuracy}

    report = {"rows": [{"epsilon": 3.7, "epsilon_published": 5.9, "accuracy": 0.9}],
              "attacks": {"rows": [row("non-private victim (overfit)", None, 0.69, 0.73, 0.9),
                                   row("DP-SGD (target epsilon 8)", 8.0, 0.6, 0.6),
                                   row("PATE student (1x)", 11.5, 0.55, 0.55),
                                   row("PATE student (3x)", 3.6, 0.512, 0.486)]}}
    text = " ".join(experiment._attack_summary(report))
    assert "at epsilon 3.60" in text and "0.014 from chance at most" in text and "0.690 and 0.730" in text
    assert "learns little" in text  # 0.2 against the main student's 0.9
    report["attacks"]["rows"][-1]["accuracy"] = 0.88
    assert "learns little" not in " ".join(experiment._attack_summary(report))
    report["attacks"]["rows"][-1]["attacked"] = 0  # not attacked: the next nearest stands in
    assert "at epsilon 11.50" in " ".join(experiment._attack_summary(report))
    report["attacks"]["rows"] = report["attacks"]["rows"][:2]
    assert experiment._attack_summary(report) == []


def test_the_report_sets_the_answers_beside_true_labels():
    report = {"nonprivate_accuracy": 0.96,
              "noise_draws": [{"answered": 84, "label_accuracy": 1.0, "accuracy": 0.90},
                              {"answered": 70, "label_accuracy": 0.9, "accuracy": 0.86},
                              {"answered": 1, "label_accuracy": 1.0, "accuracy": None}],
              "label_reference": {"random": [{"seed": 0, "labels": 84, "pate_accuracy": 0.90, "accuracy": 0.92},
                                             {"seed": 1, "labels": 70, "pate_accuracy": 0.86, "accuracy": 0.90}],
                                  "gap_mean": -0.03, "gap_standard_error": 0.01, "all_public": 300,
                                  "all_public_accuracy": 0.95}}
    text = "\n".join(experiment._label_reference_lines(report))
    assert ("| Confident-GNMax answers (70-84 per draw, mean 77; 0.950 of them right) | 2 noise draws | 0.8800 | "
            "0.8600-0.9000 | -0.0800 |") in text
    assert "| true labels of as many random queried inputs | 2 draws | 0.9100 | 0.9000-0.9200 | -0.0500 |" in text
    assert "| true labels of all 300 queried inputs | 1 | 0.9500 | - | -0.0100 |" in text
    assert "scores -0.0300 against the random-label one (standard error 0.0100 over 2 pairs)" in text
    # no draw with a student: the all-labels row stands alone
    alone = {**report, "label_reference": {**report["label_reference"], "random": [], "gap_mean": None,
                                           "gap_standard_error": None}}
    text = "\n".join(experiment._label_reference_lines(alone))
    assert "all 300 queried inputs" in text and "random queried inputs |" not in text and "Pair by pair" not in text
    assert experiment._label_reference_lines({**report, "label_reference": None}) == []


def test_plan_errors_name_the_setting():
    data = datasets.load_digits(seed=0)
    with pytest.raises(ParameterError, match="queries=450"):
        experiment.run_pate(dataclasses.replace(SMALL, queries=450, public=None), data)
    with pytest.raises(ParameterError, match="public=450"):
        experiment.run_pate(dataclasses.replace(SMALL, public=450), data)
    with pytest.raises(ParameterError, match="teachers=2000"):
        experiment.run_pate(dataclasses.replace(SMALL, teachers=2000), data)


def _unboxed(output: str) -> str:
    """The error panel's text on one line: rich wraps it at the terminal's width."""
    return " ".join(output.replace("│", " ").split())


def test_cli_refuses_bad_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["pate", "--parties", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--parties" in result.output
    result = runner.invoke(app, ["pate", "--dataset", "mnist", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--mnist-path" in result.output
    result = runner.invoke(app, ["pate", "--queries", "-5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--queries" in result.output
    result = runner.invoke(app, ["pate", "--student", "resnet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--student 'resnet' is not a zoo model" in _unboxed(result.output)
    result = runner.invoke(app, ["pate", "--queries", "50", "--public", "40", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--public (40) must hold the 50 queries" in _unboxed(result.output)
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_plan_settings_are_checked():
    with pytest.raises(ParameterError, match="PatePlan.curve_points"):
        dataclasses.replace(SMALL, curve_points=0)
    with pytest.raises(ParameterError, match="PatePlan.colluders"):
        dataclasses.replace(SMALL, colluders=3)
    with pytest.raises(ParameterError, match="PatePlan.student_self_training"):
        dataclasses.replace(SMALL, student_self_training=-1)
    with pytest.raises(ParameterError, match="student_confidence"):
        dataclasses.replace(SMALL, student_confidence=0.0)
    with pytest.raises(ParameterError, match=r"PatePlan.public \(100\) must hold the 120 queries"):
        dataclasses.replace(SMALL, public=100)
    with pytest.raises(ParameterError, match="PatePlan.student 'resnet' is not a zoo model; choose one of logreg"):
        dataclasses.replace(SMALL, student="resnet")
    with pytest.raises(ParameterError, match="PatePlan.student_lr"):
        dataclasses.replace(SMALL, student_lr=0.0)
    assert SMALL.pool == 200 and dataclasses.replace(SMALL, public=None).pool == SMALL.queries


def test_the_report_says_what_the_student_sees_and_where_its_recipe_came_from():
    report = {"public_queries": 300}
    assert experiment._public_sentence(report) == ("Public: the first 300 test inputs, unlabelled, which the student "
                                                   "may query.")
    report = {"public_queries": 1000, "public_inputs": 9000}
    assert experiment._public_sentence(report) == ("Public: the first 9000 test inputs, unlabelled; the student asks "
                                                   "about the first 1000 and sees all of them (self-training).")
    assert "set while developing on digits splits" in experiment._student_tuning({"student_from": ""})
    assert experiment._student_tuning({"student_from": "the paper's"}) == "these settings were the paper's."


class _Spy:
    """Stands in for train_student: records what each student was given, returns a model that answers class 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, np.ndarray, int]] = []

    def __call__(self, x, labels, build, *, epochs, lr, seed, self_training, confidence):
        self.calls.append((x, np.asarray(labels).copy(), self_training))
        return lambda inputs: torch.nn.functional.one_hot(torch.zeros(len(inputs), dtype=torch.long), 10).float()


def test_every_student_sees_the_whole_pool_its_labels_on_the_queries(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(experiment, "train_student", spy)
    plan = dataclasses.replace(SMALL, queries=6, public=10, curve_points=2)
    pool = torch.arange(10 * 4, dtype=torch.float32).reshape(10, 1, 2, 2)
    labels = np.array([3, -1, 5, -1, -1, 7])
    experiment._student(plan, pool, labels, build=None)
    x, given, _ = spy.calls[-1]
    assert x is pool and given.tolist() == [3, -1, 5, -1, -1, 7, -1, -1, -1, -1]
    votes = np.tile(np.array([[20, 5, 5] + [0] * 7]), (6, 1))
    aggregator = plan.aggregator()
    spy.calls.clear()
    experiment._curve(plan, votes, labels, aggregator, pool, None, pool, torch.zeros(10, dtype=torch.long))
    # the first 3 queries' answers, then all 6; the pool unlabelled past them
    assert [c[1].tolist() for c in spy.calls] == [[3, -1, 5] + [-1] * 7, [3, -1, 5, -1, -1, 7] + [-1] * 4]
    assert all(c[0] is pool for c in spy.calls)
    public_y = np.array([1, 2, 3, 4, 5, 6])
    draws = [{"seed": 0, "answered": 3, "accuracy": 0.5}]
    spy.calls.clear()
    experiment._label_reference(plan, draws, pool, public_y, None, pool, torch.zeros(10, dtype=torch.long))
    (x_random, random_labels, _), (x_all, all_labels, all_rounds) = spy.calls
    assert x_random is pool and (random_labels[:6] >= 0).sum() == 3 and (random_labels[6:] == -1).all()
    assert set(random_labels[random_labels >= 0]) <= set(public_y.tolist())
    # every query labelled, and four public inputs left to self-train on: the recipe keeps its rounds
    assert all_labels.tolist() == [1, 2, 3, 4, 5, 6, -1, -1, -1, -1] and all_rounds == plan.student_self_training
    spy.calls.clear()
    experiment._label_reference(dataclasses.replace(plan, public=None), draws, pool[:6], public_y, None, pool,
                                torch.zeros(10, dtype=torch.long))
    assert spy.calls[-1][2] == 0  # nothing left unlabelled: no self-training round


def test_cli_mnist_defaults_to_the_papers_split_and_a_convolutional_student(monkeypatch, tmp_path):
    plans: list[experiment.PatePlan] = []

    def fake_run(plan, data, on_step=None):
        plans.append(plan)
        raise ParameterError("stop here")

    monkeypatch.setattr(experiment, "run_pate", fake_run)
    monkeypatch.setattr(datasets, "load_mnist", lambda path: None)
    runner = CliRunner()
    base = ["pate", "--dataset", "mnist", "--mnist-path", str(tmp_path), "--out", str(tmp_path / "out")]
    runner.invoke(app, base)
    plan = plans[-1]
    assert (plan.queries, plan.public, plan.student) == (1000, 9000, "lenet")
    assert plan.student_from == experiment.MNIST_STUDENT["student_from"]
    runner.invoke(app, [*base, "--queries", "9500"])  # more queries than the default pool: the pool grows with them
    assert (plans[-1].queries, plans[-1].public) == (9500, 9500) and "moved that split" in plans[-1].student_from
    runner.invoke(app, [*base, "--public", "9000"])  # the default, spelled out: nothing moved
    assert plans[-1].student_from == experiment.MNIST_STUDENT["student_from"]
    runner.invoke(app, [*base, "--student", "mlp"])
    assert plans[-1].student == "mlp" and "given on the command line" in plans[-1].student_from
