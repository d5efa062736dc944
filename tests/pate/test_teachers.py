"""Teachers on disjoint shares, their votes per silo, and the student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_infer import ParameterError, datasets
from secure_infer.pate.teachers import TeacherConfig, train_student, train_teachers
from secure_infer.zoo import build


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits(seed=0)


@pytest.fixture(scope="module")
def ensemble(digits):
    return train_teachers(digits.x_train, digits.y_train, teachers=20, classes=10, seed=0,
                          config=TeacherConfig(steps=200))


def test_teachers_see_disjoint_shares_covering_the_private_set(digits, ensemble):
    seen = np.concatenate(ensemble.parts)
    assert len(seen) == len(digits.x_train) == len(np.unique(seen))
    assert max(map(len, ensemble.parts)) - min(map(len, ensemble.parts)) <= 1


def test_a_teacher_depends_only_on_its_own_share(digits, ensemble):
    """Changing an example of teacher 0's share leaves every other teacher's predictions as they were."""
    x, y = digits.x_train.clone(), digits.y_train.clone()
    victim = int(ensemble.parts[0][0])
    y[victim] = (y[victim] + 1) % 10
    x[victim] = torch.rand_like(x[victim])
    other = train_teachers(x, y, teachers=20, classes=10, seed=0, config=TeacherConfig(steps=200))
    before, after = ensemble.predict(digits.x_test), other.predict(digits.x_test)
    np.testing.assert_array_equal(before[1:], after[1:])


def test_ensemble_beats_its_teachers(digits, ensemble):
    acc = ensemble.accuracy(digits.x_test, digits.y_test)
    plurality = (ensemble.votes(digits.x_test).argmax(1) == digits.y_test.numpy()).mean()
    assert acc.mean() > 0.5  # ~67 examples each
    assert plurality > acc.mean() + 0.05


def test_silo_votes_add_up_to_the_whole_vote(digits, ensemble):
    silos = ensemble.silo_votes(digits.x_test[:50], 3)
    assert len(silos) == 3
    np.testing.assert_array_equal(sum(silos), ensemble.votes(digits.x_test[:50]))
    assert [int(s[0].sum()) for s in silos] == [7, 7, 6]
    with pytest.raises(ParameterError, match="silos"):
        ensemble.silo_votes(digits.x_test[:5], 21)


def test_student_learns_from_answered_queries_only(digits):
    labels = digits.y_test[:200].numpy().copy()
    labels[100:] = -1
    student = train_student(digits.x_test[:200], labels, lambda: build("mlp", (1, 8, 8), 10, seed=0), epochs=60)
    acc = float((student(digits.x_test[200:]).argmax(1) == digits.y_test[200:]).float().mean())
    assert acc > 0.8
    with pytest.raises(ParameterError, match="no query was answered"):
        train_student(digits.x_test[:5], np.full(5, -1), lambda: build("mlp", (1, 8, 8), 10, seed=0))


def test_bad_teacher_counts_are_refused(digits):
    with pytest.raises(ParameterError, match="teachers"):
        train_teachers(digits.x_train[:10], digits.y_train[:10], teachers=11, classes=10)
