"""Teachers on disjoint shares, their votes per silo, and the student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_infer import ParameterError, datasets
from secure_infer.pate.teachers import TeacherConfig, assign, train_student, train_teachers
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
    sizes = [len(p) for p in ensemble.parts]
    assert min(sizes) > 0.5 * len(digits.x_train) / 20 and max(sizes) < 1.5 * len(digits.x_train) / 20


def test_removing_an_example_changes_only_its_own_teacher(digits, ensemble):
    """The neighbouring relation of the analysis (and of DP-SGD's epsilon): add or remove one example."""
    gone = int(ensemble.parts[3][0])
    keep = torch.from_numpy(np.delete(np.arange(len(digits.x_train)), gone))
    other = train_teachers(digits.x_train[keep], digits.y_train[keep], teachers=20, classes=10, seed=0,
                           config=TeacherConfig(steps=200))
    before, after = ensemble.predict(digits.x_test), other.predict(digits.x_test)
    changed = [t for t in range(20) if not np.array_equal(before[t], after[t])]
    assert set(changed) <= {3}
    assert [len(p) for p in other.parts] == [len(p) - (t == 3) for t, p in enumerate(ensemble.parts)]
    # a content hash, not a position: the same examples land with the same teachers in any order
    shuffled = torch.randperm(len(digits.x_train), generator=torch.Generator().manual_seed(1))
    owner = assign(digits.x_train, digits.y_train, 20, seed=0)
    np.testing.assert_array_equal(assign(digits.x_train[shuffled], digits.y_train[shuffled], 20, seed=0),
                                  owner[shuffled.numpy()])


def test_ensemble_beats_its_teachers(digits, ensemble):
    acc = ensemble.accuracy(digits.x_test, digits.y_test)
    plurality = (ensemble.votes(digits.x_test).argmax(1) == digits.y_test.numpy()).mean()
    assert acc.mean() > 0.5  # ~67 examples each
    assert plurality > acc.mean() + 0.05


def test_silo_votes_add_up_to_the_whole_vote(digits, ensemble):
    silos = ensemble.silo_votes(digits.x_test[:50], 3)
    assert len(silos) == 3
    np.testing.assert_array_equal(sum(silos), ensemble.votes(digits.x_test[:50]))
    assert [int(s[0].sum()) for s in silos] == [7, 7, 6]  # 20 teachers in contiguous blocks
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


def test_self_training_adds_confident_pseudo_labels_and_keeps_the_answers(digits, monkeypatch):
    import secure_infer.zoo as zoo

    fits = []
    real_train = zoo.train

    def recording_train(model, data, config, **kwargs):
        fits.append((data.x_train.clone(), data.y_train.clone(), config.epochs))
        return real_train(model, data, config, **kwargs)

    monkeypatch.setattr(zoo, "train", recording_train)
    x = digits.x_test[:200]
    labels = np.full(200, -1)
    labels[:64] = digits.y_test[:64].numpy()
    student = train_student(x, labels, lambda: build("mlp", (1, 8, 8), 10, seed=0), epochs=20, self_training=1,
                            confidence=0.5)
    assert len(fits) == 2
    (x0, y0, e0), (x1, y1, e1) = fits
    assert torch.equal(x0, x[:64]) and torch.equal(y0, digits.y_test[:64])  # first: the answers only
    assert torch.equal(x1[:64], x[:64]) and torch.equal(y1[:64], digits.y_test[:64])  # answers keep their labels
    assert len(x1) > 64  # declined inputs the first student was sure of were added
    assert e1 * -(-len(x1) // 32) == pytest.approx(e0 * 2, rel=0.5)  # about the same optimizer steps
    with torch.no_grad():
        assert student(x).shape == (200, 10)
    for bad in ({"self_training": -1}, {"confidence": 0.0}, {"confidence": 1.5}):
        with pytest.raises(ParameterError, match="self_training"):
            train_student(x, labels, lambda: build("mlp", (1, 8, 8), 10, seed=0), **bad)


def test_bad_teacher_counts_are_refused(digits):
    with pytest.raises(ParameterError, match="teachers"):
        train_teachers(digits.x_train[:10], digits.y_train[:10], teachers=11, classes=10)
