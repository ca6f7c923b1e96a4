"""The hand-written activation functions against PyTorch's own, and their picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchclf import activations

EXTREMES = torch.tensor([-1000.0, -100.0, -30.0, -1.0, -1e-6, 0.0, 1e-6, 1.0, 30.0, 100.0, 1000.0])


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_elementwise_functions_match_torch(name):
    mine, theirs = activations.FUNCTIONS[name], activations.TORCH_EQUIVALENTS[name]
    x = torch.randn(4, 5, 6, dtype=torch.float64) * 4
    torch.testing.assert_close(mine(x), theirs(x))
    out = mine(EXTREMES)
    assert torch.isfinite(out).all(), f"{name} gave inf/nan on large inputs: {out}"
    torch.testing.assert_close(out, theirs(EXTREMES))
    assert mine(x).shape == x.shape


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_gradients_match_torch(name):
    # Away from relu's kink at 0, where the derivative is a convention.
    x = torch.tensor([-3.0, -0.5, 0.25, 2.0], dtype=torch.float64, requires_grad=True)
    (g_mine,) = torch.autograd.grad(activations.FUNCTIONS[name](x).sum(), x)
    (g_torch,) = torch.autograd.grad(activations.TORCH_EQUIVALENTS[name](x).sum(), x)
    torch.testing.assert_close(g_mine, g_torch)


def test_relu_values_by_hand():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.5])
    assert activations.relu(x).tolist() == [0.0, 0.0, 0.0, 3.5]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch_along_each_dim(dim):
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 10
    p = activations.softmax(x, dim=dim)
    torch.testing.assert_close(p, torch.softmax(x, dim=dim))
    torch.testing.assert_close(p.sum(dim=dim), torch.ones_like(p.sum(dim=dim)))


def test_softmax_is_stable_for_huge_logits_and_keeps_argmax():
    logits = torch.tensor([[1000.0, 999.0, -1000.0], [-5.0, 2.0, 1.0]])
    p = activations.softmax(logits, dim=1)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, torch.softmax(logits, dim=1))
    assert p.argmax(dim=1).tolist() == logits.argmax(dim=1).tolist()


def test_tutorial_logits_become_the_tutorials_probabilities():
    # The tutorial's untrained blob model: its first row of logits and the probabilities it printed.
    logits = torch.tensor([[-1.2549, -0.8112, -1.4795, -0.5696]])
    p = activations.softmax(logits, dim=1)
    np.testing.assert_allclose(p.numpy(), [[0.1872, 0.2918, 0.1495, 0.3715]], atol=2e-4)
    assert int(p.argmax()) == 3  # the tutorial's "tensor(3)"
    assert float(p.sum()) == pytest.approx(1.0)


def test_activation_picture_has_four_panels(tmp_path, monkeypatch):
    import matplotlib.image as mpimg

    from torchclf import plots

    seen = {}
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (seen.setdefault("axes", len(fig.axes)), original(fig, path))[1])
    path = plots.activation_functions(tmp_path / "activations.png")
    assert seen["axes"] == 4
    img = mpimg.imread(path)
    assert img.shape[1] > 3 * img.shape[0]  # four panels side by side
    assert img[..., :3].std() > 0.05  # not blank
