"""The tutorial's activation functions written out by hand with plain tensor ops.

These are for reading and for the docs' pictures, not for training: the
networks in :mod:`torchclf.model` use PyTorch's own modules. Each function
matches its PyTorch counterpart (the tests check them against it) and works
on a tensor of any shape, element by element, except :func:`softmax`, which
normalises along one dimension.
"""

from __future__ import annotations

import torch


def relu(x: torch.Tensor) -> torch.Tensor:
    """Rectified linear unit: ``max(0, x)``.

    Parameters
    ----------
    x : Tensor of any shape

    Returns
    -------
    Tensor of the same shape as ``x``
        Negative inputs become 0; the rest pass through unchanged. This bend
        at 0 is what lets stacked linear layers draw curved boundaries.
    """
    return torch.maximum(torch.zeros_like(x), x)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid: ``1 / (1 + exp(-x))``, squashing any number into (0, 1).

    Parameters
    ----------
    x : Tensor of any shape

    Returns
    -------
    Tensor of the same shape as ``x``, values in [0, 1]
        A binary model's logit becomes the probability of the positive class.
    """
    # exp(-x) overflows to inf for very negative x; 1/(1+inf) = 0 is still the
    # right limit, so the textbook formula is safe here in floating point.
    return 1.0 / (1.0 + torch.exp(-x))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent: ``(exp(x) - exp(-x)) / (exp(x) + exp(-x))``, into (-1, 1).

    Parameters
    ----------
    x : Tensor of any shape

    Returns
    -------
    Tensor of the same shape as ``x``, values in [-1, 1]
    """
    # The same value written as 2*sigmoid(2x) - 1, which, unlike the ratio of
    # exponentials, does not turn into inf/inf = nan for |x| above about 45.
    return 2.0 * sigmoid(2.0 * x) - 1.0


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim``: ``exp(x_i) / sum_j exp(x_j)``.

    Parameters
    ----------
    x : Tensor of shape (..., n_classes, ...)
        Logits; ``dim`` indexes the classes.
    dim : int
        The dimension that sums to 1 afterwards (1 for (n_samples, n_classes)).

    Returns
    -------
    Tensor of the same shape as ``x``
        Non-negative values that sum to 1 along ``dim``: a multiclass model's
        logits become one probability per class, and argmax picks the label.
    """
    # Subtracting the largest logit leaves the result unchanged (it cancels in
    # the ratio) and keeps exp from overflowing for large logits.
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


#: The hand-written functions by name, with PyTorch's versions for comparison.
FUNCTIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax}
TORCH_EQUIVALENTS = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x, dim=-1: torch.softmax(x, dim=dim),
}
