"""Extraction: a surrogate trained on the answers agrees with the victim far above chance."""

from __future__ import annotations

import pytest

from secure_infer import ParameterError, zoo
from secure_infer.attacks import extraction_attack


def test_surrogate_agreement_grows_with_the_budget(trained_zoo, digits) -> None:
    victim = trained_zoo["mlp"].model
    pool, eval_x = digits.x_train, digits.x_test
    reference = victim(eval_x).detach()
    build = lambda: zoo.build("mlp", digits.input_shape, digits.num_classes, seed=3)  # noqa: E731
    points = extraction_attack(victim, pool, budgets=[20, 400], victim_on_eval=reference, eval_x=eval_x,
                               eval_y=digits.y_test, build=build, epochs=60)
    assert points[0].budget == 20 and points[1].budget == 400
    assert points[1].agreement > 0.85  # chance is about 0.1
    assert points[1].agreement >= points[0].agreement
    labels = extraction_attack(victim, pool, budgets=[400], victim_on_eval=reference, eval_x=eval_x,
                               eval_y=digits.y_test, build=build, answers="labels", epochs=60)
    assert labels[0].agreement > 0.7


def test_budgets_must_fit_the_pool(trained_zoo, digits) -> None:
    with pytest.raises(ParameterError, match="budgets"):
        extraction_attack(trained_zoo["mlp"].model, digits.x_train[:10], budgets=[50], victim_on_eval=digits.x_test,
                          eval_x=digits.x_test, eval_y=digits.y_test, build=lambda: None)
