"""Tasks: shapes, losses and logits -> probabilities -> labels, against torch's own functions."""

import numpy as np
import pytest
import torch

from torchclf.task import Task, detect_kind


def test_detect_kind():
    assert detect_kind(2, False) == "binary"
    assert detect_kind(3, False) == "multiclass"
    assert detect_kind(2, True) == "multilabel"


def test_binary_uses_one_logit_and_two_probability_columns():
    task = Task("binary", 2)
    assert task.n_outputs == 1
    logits = torch.tensor([[-2.0], [0.0], [3.0]])
    proba = task.probabilities(logits)
    p = torch.sigmoid(logits)[:, 0]
    torch.testing.assert_close(proba, torch.stack([1 - p, p], dim=1))
    assert task.labels(proba).tolist() == [0, 1, 1]
    y = task.target_tensor(np.array([0, 0, 1]))
    assert y.shape == (3, 1) and y.dtype == torch.float32
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")[:, 0]
    torch.testing.assert_close(task.per_sample_loss(task.loss_function(), logits, y), expected)
    assert task.n_correct(logits, y).item() == 2


def test_multiclass_uses_softmax_and_cross_entropy():
    task = Task("multiclass", 3)
    logits = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]])
    proba = task.probabilities(logits)
    torch.testing.assert_close(proba, torch.softmax(logits, dim=1))
    assert task.labels(proba).tolist() == [1, 0]
    y = task.target_tensor(np.array([1, 2]))
    assert y.dtype == torch.int64
    expected = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(task.per_sample_loss(task.loss_function(), logits, y), expected)
    assert task.n_correct(logits, y).item() == 1


def test_multilabel_thresholds_each_label():
    task = Task("multilabel", 3)
    logits = torch.tensor([[2.0, -2.0, 0.1], [-1.0, -1.0, -1.0]])
    proba = task.probabilities(logits)
    torch.testing.assert_close(proba, torch.sigmoid(logits))
    assert task.labels(proba).tolist() == [[1, 0, 1], [0, 0, 0]]
    y = task.target_tensor(np.array([[1, 0, 1], [0, 1, 0]]))
    assert task.n_correct(logits, y).item() == 1  # subset accuracy


@pytest.mark.parametrize("kind, n", [("binary", 2), ("multilabel", 3)])
def test_a_rows_probabilities_do_not_depend_on_where_it_sits_in_its_batch(kind, n):
    """Predicting in chunks gives the bits of predicting at once: torch's vectorised float32 sigmoid rounds
    the elements past a tensor's last full vector differently (on AVX2 and AVX-512 CPUs)."""
    task = Task(kind, n)
    logits = torch.randn(1000, task.n_outputs, generator=torch.Generator().manual_seed(0)) * 3
    whole = task.probabilities(logits)
    assert whole.dtype == torch.float32
    for size in (5, 16, 37):
        assert torch.equal(torch.cat([task.probabilities(logits[i:i + size]) for i in range(0, 1000, size)]), whole)
    torch.testing.assert_close(whole[:, -1], torch.sigmoid(logits[:, -1]))


@pytest.mark.parametrize("kind, n", [("binary", 2), ("multiclass", 10), ("multilabel", 3)])
def test_the_smoothed_loss_floor_is_the_training_loss_at_its_best(kind, n):
    """With label smoothing e the training loss is smallest where the probabilities equal the smoothed targets,
    and that smallest value is the floor the report quotes."""
    task, e = Task(kind, n), 0.1
    loss = task.loss_function(label_smoothing=e)
    if kind == "multiclass":
        y = task.target_tensor(np.array([3, 7]))
        best = torch.full((2, n), e / n).scatter_(1, y[:, None], 1 - e + e / n).log()
    else:
        y = task.target_tensor(np.array([[1] * task.n_outputs, [0] * task.n_outputs]) if kind == "multilabel"
                               else np.array([1, 0]))
        best = torch.where(y == 1, 1 - e / 2, e / 2).logit()
    floor = task.smoothed_loss_floor(e)
    torch.testing.assert_close(task.per_sample_loss(loss, best, y), torch.full((2,), floor))
    assert (task.per_sample_loss(loss, best * 1.5, y) > floor).all()  # sharper than the targets costs more
    assert task.smoothed_loss_floor(0.0) == 0.0


def test_threshold_changes_binary_labels():
    proba = torch.tensor([[0.35, 0.65]])
    assert Task("binary", 2, threshold=0.7).labels(proba).item() == 0
    assert Task("binary", 2).labels(proba).item() == 1


def test_class_weight_reweights_the_loss():
    task = Task("multiclass", 2)
    logits = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    plain = task.per_sample_loss(task.loss_function(), logits, y)
    weighted = task.per_sample_loss(task.loss_function(torch.tensor([1.0, 3.0])), logits, y)
    assert weighted[1] == pytest.approx(3 * plain[1].item())


@pytest.mark.parametrize("kind, n", [("binary", 3), ("multiclass", 1), ("other", 2)])
def test_invalid_tasks_are_refused(kind, n):
    with pytest.raises(ValueError):
        Task(kind, n)
