"""The conformance corpus: models written the way their public sources write them, through both backends.

Every outcome is ``converts`` (with argmax agreement) or a clear
``UnsupportedModelError``; any other exception is a bug. ``python
tests/models/coverage.py`` runs the same corpus and writes
``docs/model-coverage.md``.
"""

from __future__ import annotations

import pytest
import torch
from corpus import ENTRIES
from harness import _flip_margin, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NAMES = [e.name for e in ENTRIES]


def test_the_corpus_is_broad() -> None:
    assert len(ENTRIES) >= 25 and len(set(NAMES)) == len(NAMES)
    assert {e.data for e in ENTRIES} >= {"digits", "digits-flat", "tokens", "audio"}


def test_a_flip_is_measured_by_the_plaintext_margin_it_crossed() -> None:
    want = torch.tensor([[1.0, 0.99, 0.0], [3.0, 0.0, 1.0], [0.0, 2.0, 0.5]])
    assert _flip_margin(want + 0.001, want) is None  # nothing moved
    near_tie = want.clone()
    near_tie[0, 1] += 0.02
    assert _flip_margin(near_tie, want) == pytest.approx(0.01)
    wrong = near_tie.clone()
    wrong[1, 2] += 2.5  # a confident input flipped too: the largest margin crossed is its 2.0
    assert _flip_margin(wrong, want) == pytest.approx(2.0)


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_crypten_converts_everything_exactly_in_argmax(entry) -> None:
    outcome = run(entry, "crypten")
    assert outcome.status != "error", outcome.message
    assert outcome.status == "converts", outcome.message  # every corpus op has a CrypTen rule
    # exact in argmax, except where the plaintext top two are closer than a small conversion error can reach
    # (which inputs are near-ties can move whenever the seeded training's weights move a little)
    assert outcome.agreement == 1.0 or (outcome.max_error <= 0.05 and outcome.flip_margin <= 2 * outcome.max_error), (
        outcome.agreement, outcome.max_error, outcome.flip_margin)


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_tenseal_converts_or_refuses_clearly(entry) -> None:
    outcome = run(entry, "tenseal", he_budget=300)  # real encryption for the cheap ones keeps CI to minutes
    assert outcome.status != "error", outcome.message
    if outcome.status == "unsupported":
        assert "crypten" in outcome.message or "tolerance" in outcome.message  # it says what to do instead
        return
    assert outcome.agreement >= 0.99, (outcome.agreement, outcome.max_error)
    if outcome.encrypted_inputs:  # the same inputs under real encryption
        assert outcome.encrypted_agreement >= 0.99, (outcome.encrypted_agreement, outcome.encrypted_error)
