"""The whole suite on a tiny configuration: every row, every column, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_infer.attacks import suite

pytestmark = pytest.mark.slow  # the module fixture runs the whole suite on a tiny configuration

TINY = suite.SuiteConfig(members=50, non_members=60, epochs=200, shadows=2, budgets=(20, 60), inversion_steps=15,
                         dp_epsilons=(8.0,), backends=("crypten", "tenseal"), privacy_inputs=150,
                         tenseal_degree=2, budget_caps=(20,))


STEPS: list[str] = []


@pytest.fixture(scope="module")
def report():
    return suite.run_suite(TINY, on_step=STEPS.append)


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_every_serving_configuration_is_attacked(report) -> None:
    names = [r.name for r in report.rows]
    assert names[:4] == ["plaintext, full confidences", "plaintext, full confidences, budget 20 inputs",
                         "plaintext, top-1 label only", "plaintext, confidences rounded to 0.1"]
    assert any(n.startswith("CrypTen") for n in names) and any(n.startswith("TenSEAL") for n in names)
    assert any(n.startswith("DP-SGD") for n in names)
    plain = report.rows[0]
    crypten = next(r for r in report.rows if r.name.startswith("CrypTen"))
    tenseal = next(r for r in report.rows if r.name.startswith("TenSEAL"))
    # every attack finds something on the overfit plaintext victim (chance: AUC 0.5, agreement and identification 0.1)
    assert plain.best_mia.auc > 0.65
    assert plain.extraction[-1].agreement > 0.6
    assert plain.inversion.identified >= 0.5
    # encryption protects the input ...
    assert plain.input_privacy.accuracy > 0.7 and plain.input_privacy.z_above_chance > 8
    for row in (crypten, tenseal):
        assert row.input_privacy.z_above_chance < 4  # chance, within 4 binomial standard errors
    # ... not the outputs: the output attacks find the same through CrypTen as in plaintext
    assert abs(crypten.membership["loss"].auc - plain.membership["loss"].auc) < 0.03
    assert abs(crypten.extraction[-1].agreement - plain.extraction[-1].agreement) < 0.1
    # a capped client: extraction stops at the cap, membership reaches only part of the candidates
    capped = report.rows[1]
    assert capped.budget == 20 and plain.budget is None and capped.accuracy == plain.accuracy
    assert [p.budget for p in capped.extraction] == [20] and capped.extraction[0] == plain.extraction[0]
    for key, r in capped.membership.items():
        assert r.queried == 20 and r.coverage == 20 / 110 and len(r.scores) == 110
        assert abs(r.auc - 0.5) < abs(plain.membership[key].auc - 0.5), key  # closer to chance than uncapped
    assert capped.inversion.queries == 0  # a step needs 1280 queries: none answered
    assert report.dp[0]["epsilon"] <= 8.0 + 1e-6
    assert len(STEPS) == suite.count_steps(TINY)  # the CLI's progress bar is sized right


@pytest.mark.multiprocess
def test_report_files(report, tmp_path: Path) -> None:
    paths = suite.write_report(report, tmp_path)
    assert {p.name for p in paths} == {"report.md", "report.json", "mia_roc.png", "extraction.png", "inversion.png"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["rows"]) == len(report.rows) and data["environment"]["opacus"]
    capped = data["rows"][1]
    assert capped["budget"] == 20 and data["rows"][0]["budget"] is None and data["config"]["budget_caps"] == [20]
    assert capped["membership"]["loss"]["queried"] == 20 and capped["membership"]["loss"]["coverage"] == 20 / 110
    md = (tmp_path / "report.md").read_text()
    assert "| plaintext, full confidences |" in md and "input-privacy attack acc" in md
    assert "| plaintext, full confidences, budget 20 inputs |" in md
    capped_row = next(line for line in md.splitlines() if line.startswith("| plaintext, full confidences, budget 20"))
    assert " / refused |" in capped_row  # the 60-query extraction point was refused
    note = next(line for line in md.splitlines() if line.startswith("- plaintext, full confidences, budget 20"))
    assert "reached 20 of 110 candidates (coverage 0.18)" in note and "stopped at 20 of 60 planned" in note
    assert any(line.startswith("- Budget rows") and "budget-exhausted" in line for line in md.splitlines())
