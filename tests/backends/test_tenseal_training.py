"""HE training and HE-aware fine-tuning."""

from __future__ import annotations

import pytest
import torch

import secure_infer as si
from secure_infer.approximations import PolyActivation, fit, polynomial_model
from secure_infer.backends.tenseal.training import train_logistic_regression

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow
def test_logistic_regression_on_encrypted_data() -> None:
    bc = si.datasets.load_breast_cancer(seed=0)
    result = train_logistic_regression(bc, epochs=10)
    assert result.test_accuracy >= 0.9
    assert result.accuracy_gap <= 3.0  # the bound, against the best plaintext LR
    assert len(result.sigmoid_coefficients) == 4
    # the returned model works on the caller's own (unscaled) features
    pred = (result.model(bc.x_test).squeeze(1) > 0).long()
    assert float((pred == bc.y_test).float().mean()) == pytest.approx(result.test_accuracy)


def test_training_refuses_multiclass(digits) -> None:
    with pytest.raises(si.ParameterError, match="2 classes"):
        train_logistic_regression(digits)


def test_fit_is_close_on_its_interval() -> None:
    poly = fit(torch.nn.Sigmoid(), -4.0, 4.0, 3)
    x = torch.linspace(-4, 4, 101)
    assert float((poly(x) - torch.sigmoid(x)).abs().max()) < 0.05
    assert poly.degree == 3 and "Sigmoid" in repr(poly)


def test_he_aware_fine_tuning_trains_the_polynomials(trained_zoo, digits) -> None:
    z = trained_zoo["mlp"]
    poly_model = polynomial_model(z.model, digits.x_train[:300], degree=2)
    assert any(isinstance(m, PolyActivation) for m in poly_model.modules())
    poly = next(m for m in poly_model.modules() if isinstance(m, PolyActivation))
    coefficients = poly.coefficients.detach().clone()
    si.rewrites.fine_tune(poly_model, digits, epochs=5, lr=1e-3)
    assert not torch.equal(coefficients, poly.coefficients.detach())  # learned, not frozen
    after = si.zoo.accuracy(poly_model, digits.x_test, digits.y_test)
    assert after >= z.test_accuracy - 0.03
    # the fine-tuned polynomial model is exact under CKKS
    enc = si.wrap(poly_model, "tenseal", sample_input=digits.x_test[:1], mode="batch",
                  calibration=digits.x_train[:300])
    assert all(c.kind != "approximated" for c in enc.report().conversions)
    ev = enc.evaluate(digits.x_test[:200], digits.y_test[:200], batch_size=4096)
    assert ev.agreement >= 0.99
