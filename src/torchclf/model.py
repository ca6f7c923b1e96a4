"""Networks built from a :class:`~torchclf.config.ModelConfig`, and the tutorial's presets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchclf.config import ModelConfig

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


class MLP(nn.Module):
    """A multilayer perceptron that returns logits.

    Each hidden block is Linear -> [BatchNorm|LayerNorm] -> activation ->
    [Dropout]; the output layer is a plain Linear with ``n_outputs`` units.

    Parameters
    ----------
    n_inputs : int
        Features per row after preprocessing.
    n_outputs : int
        Output units, from the task (1 for binary).
    config : ModelConfig
    """

    def __init__(self, n_inputs: int, n_outputs: int, config: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for units in config.hidden:
            layers.append(nn.Linear(width, units))
            if config.norm == "batch":
                layers.append(nn.BatchNorm1d(units))
            elif config.norm == "layer":
                layers.append(nn.LayerNorm(units))
            if config.activation != "linear":
                layers.append(_ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n_samples, n_outputs) for x of shape (n_samples, n_inputs)."""
        return self.layers(x)


def build_model(n_inputs: int, n_outputs: int, config: ModelConfig) -> MLP:
    return MLP(n_inputs, n_outputs, config)


@dataclass(frozen=True)
class Preset:
    """A named model with the training settings the tutorial used for it."""

    description: str
    model: ModelConfig
    train: dict = field(default_factory=dict)


_TUTORIAL_SGD = {"optimizer": "sgd", "lr": 0.1, "batch_size": None, "patience": 0, "schedule": "none", "weight_decay": 0.0}

PRESETS: dict[str, Preset] = {
    "circle-v0": Preset(
        "the tutorial's first model: 2-5-1, no activation (draws a straight line)",
        ModelConfig(hidden=(5,), activation="linear", dropout=0.0, norm="none"),
        {**_TUTORIAL_SGD, "epochs": 100},
    ),
    "circle-v1": Preset(
        "more layers, units and epochs: 2-10-10-1, still linear",
        ModelConfig(hidden=(10, 10), activation="linear", dropout=0.0, norm="none"),
        {**_TUTORIAL_SGD, "epochs": 1000},
    ),
    "circle-v2": Preset(
        "circle-v1 with ReLU between layers: the non-linearity that bends the boundary",
        ModelConfig(hidden=(10, 10), activation="relu", dropout=0.0, norm="none"),
        {**_TUTORIAL_SGD, "epochs": 1000},
    ),
    "blob": Preset(
        "the tutorial's multiclass model: 2-8-8-4, linear",
        ModelConfig(hidden=(8, 8), activation="linear", dropout=0.0, norm="none"),
        {**_TUTORIAL_SGD, "epochs": 100},
    ),
    "default": Preset("torchclf's default: 256-256 ReLU, dropout 0.2, AdamW, early stopping", ModelConfig(), {}),
}
