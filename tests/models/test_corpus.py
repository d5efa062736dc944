"""The conformance corpus: models written the way their public sources write them, through both backends.

Every outcome is ``converts`` (with argmax agreement) or a clear
``UnsupportedModelError``; any other exception is a bug. ``python
tests/models/coverage.py`` runs the same corpus and writes
``docs/model-coverage.md``.
"""

from __future__ import annotations

import pytest
from corpus import ENTRIES
from harness import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NAMES = [e.name for e in ENTRIES]


def test_the_corpus_is_broad() -> None:
    assert len(ENTRIES) >= 25 and len(set(NAMES)) == len(NAMES)
    assert {e.data for e in ENTRIES} >= {"digits", "digits-flat", "tokens", "audio"}


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_crypten_converts_everything_exactly_in_argmax(entry) -> None:
    outcome = run(entry, "crypten")
    assert outcome.status != "error", outcome.message
    assert outcome.status == "converts", outcome.message  # every corpus op has a CrypTen rule
    assert outcome.agreement == 1.0, (outcome.agreement, outcome.max_error)


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
