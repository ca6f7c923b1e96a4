"""Networks built from a :class:`~torchclf.config.ModelConfig`, and the tutorial's presets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchclf.config import ModelConfig
from torchclf.preprocess import InputLayout

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


# Learnt frequencies per numeric column, and their initial spread (cycles per standard deviation of the
# scaled input): small enough that the first features vary slowly across the data, as in "On Embeddings for
# Numerical Features in Tabular Deep Learning" (Gorishniy et al., 2022), whose periodic features these are.
FREQUENCIES = 16
FREQUENCY_SCALE = 0.1


class PeriodicEmbedding(nn.Module):
    """Per numeric column: x -> ReLU(Linear([cos(2 pi f x), sin(2 pi f x)])) with learnt frequencies f.

    Input of shape (n_samples, n_columns); output (n_samples, n_columns * dim).
    Each column has its own frequencies and its own small linear layer.
    """

    def __init__(self, n_columns: int, dim: int):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_columns, FREQUENCIES) * FREQUENCY_SCALE)
        bound = (2 * FREQUENCIES) ** -0.5  # nn.Linear's initialisation for 2 * FREQUENCIES inputs
        self.weight = nn.Parameter(torch.empty(n_columns, 2 * FREQUENCIES, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_columns, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * torch.pi * x.unsqueeze(-1) * self.frequencies  # (n, columns, FREQUENCIES)
        features = torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
        out = torch.einsum("ncf,cfd->ncd", features, self.weight) + self.bias
        return torch.relu(out).flatten(1)


# Dropout on the CPU. torch's own draws one Bernoulli variable per element from its Mersenne Twister: 1.3 to
# 1.5 ms for a 512 x 256 batch, a quarter of the default network's training time on the CPU (measured in
# docs/benchmarks.md). Here each element's decision is 16 bits of a block of 64-bit random integers drawn
# from the same generator (so seeding, checkpoints and resuming treat it as before): p is rounded to a
# multiple of 1/65536 (0.2 drops 13107/65536 = 0.19999695 of the elements), and the kept ones are scaled by
# the inverse of the rounded keep rate, so every element's expectation is unchanged. 0.55 ms for that batch,
# forward; the backward pass is one multiplication. Elsewhere (CUDA's Philox draws are fast and graph-safe)
# and outside training, torch's dropout.
DROP_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, drawn faster on the CPU (see above)."""
    cut = round(p * DROP_LEVELS)
    if not training or x.device.type != "cpu" or not 0 < cut < DROP_LEVELS or x.numel() == 0:
        return nn.functional.dropout(x, p, training)
    n = x.numel()
    draws = torch.randint(-(2 ** 63), 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    codes = draws.view(torch.int16)[:n].view(x.shape)  # uniform on -32768 .. 32767
    keep = (codes >= cut - DROP_LEVELS // 2).to(x.dtype).mul_(DROP_LEVELS / (DROP_LEVELS - cut))
    return x * keep


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` through :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def periodic_columns(layout: InputLayout, config: ModelConfig) -> tuple[int, ...]:
    """The encoded columns that get periodic embeddings: the numeric ones, when ``numeric_embedding`` is
    ``periodic`` and there are at most ``periodic_max`` of them; else none."""
    if config.numeric_embedding != "periodic":
        return ()
    if config.periodic_max is not None and len(layout.numeric) > config.periodic_max:
        return ()
    return tuple(layout.numeric)


class FeatureInputs(nn.Module):
    """The encoded matrix -> the first hidden layer's input.

    Columns that are not category codes pass through unchanged; with
    periodic embeddings the numeric columns' embeddings are appended (see
    :func:`periodic_columns`); each embedded categorical column's code is
    looked up in its own table.

    Parameters
    ----------
    layout : InputLayout
        Which encoded columns are numbers and which are codes (from the preprocessor).
    config : ModelConfig
    """

    def __init__(self, layout: InputLayout, config: ModelConfig):
        super().__init__()
        code_columns = {j for j, _ in layout.codes}
        dense = [j for j in range(layout.width) if j not in code_columns]
        numeric = list(periodic_columns(layout, config))
        # Indices follow from the layout, so they are not saved with the weights.
        self.register_buffer("dense", torch.tensor(dense, dtype=torch.long), persistent=False)
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.code_columns = [j for j, _ in layout.codes]
        self.periodic = PeriodicEmbedding(len(numeric), config.embedding_dim) if numeric else None
        self.embeddings = nn.ModuleList(nn.Embedding(n, config.embedding_dim) for _, n in layout.codes)
        bound = config.embedding_dim ** -0.5
        for table in self.embeddings:
            # nn.Embedding draws N(0, 1) codes: a category seen in a row or two keeps a large random code that
            # the next layer reads as signal. +-1/sqrt(dim), as rtdl's category embeddings, keeps them on the
            # scale of the other inputs (3,000-row tables with 2.7 to 35 training rows per category: 1.2 to
            # 3.3 points more accurate).
            nn.init.uniform_(table.weight, -bound, bound)
        self.width = len(dense) + (len(numeric) + len(layout.codes)) * config.embedding_dim

    @staticmethod
    def needed(layout: InputLayout | None, config: ModelConfig) -> bool:
        """Whether the encoded matrix needs this module, or goes to the first layer as it is."""
        return layout is not None and bool(layout.codes or periodic_columns(layout, config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.index_select(1, self.dense)]
        if self.periodic is not None:
            parts.append(self.periodic(x.index_select(1, self.numeric)))
        for j, table in zip(self.code_columns, self.embeddings):
            # Codes come from the preprocessor; the clamp keeps any other input inside the table.
            parts.append(table(x[:, j].long().clamp(0, table.num_embeddings - 1)))
        return torch.cat(parts, dim=1)


class MLP(nn.Module):
    """A multilayer perceptron that returns logits.

    Each hidden block is Linear -> [BatchNorm|LayerNorm] -> activation ->
    [Dropout]; the output layer is a plain Linear with ``n_outputs`` units.
    When the inputs hold category codes or numeric embeddings are on, a
    :class:`FeatureInputs` module (``inputs``) comes first.

    Parameters
    ----------
    n_inputs : int
        Features per row after preprocessing.
    n_outputs : int
        Output units, from the task (1 for binary).
    config : ModelConfig
    layout : InputLayout, optional
        The preprocessor's :meth:`~torchclf.preprocess.Preprocessor.layout`;
        None treats every input as a plain number.
    """

    def __init__(self, n_inputs: int, n_outputs: int, config: ModelConfig, layout: InputLayout | None = None):
        super().__init__()
        if layout is not None and layout.width != n_inputs:
            raise ValueError(f"MLP: layout has {layout.width} columns, n_inputs is {n_inputs}")
        self.inputs = FeatureInputs(layout, config) if FeatureInputs.needed(layout, config) else None
        layers: list[nn.Module] = []
        width = n_inputs if self.inputs is None else self.inputs.width
        for units in config.hidden:
            layers.append(nn.Linear(width, units))
            if config.norm == "batch":
                layers.append(nn.BatchNorm1d(units))
            elif config.norm == "layer":
                layers.append(nn.LayerNorm(units))
            if config.activation != "linear":
                layers.append(_ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                layers.append(Dropout(config.dropout))
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n_samples, n_outputs) for x of shape (n_samples, n_inputs)."""
        return self.layers(x if self.inputs is None else self.inputs(x))


def build_model(inputs: InputLayout | int, n_outputs: int, config: ModelConfig) -> MLP:
    """The network for inputs laid out as ``inputs`` (``Preprocessor.layout()``), or for that many
    plain inputs (no embeddings)."""
    if isinstance(inputs, InputLayout):
        return MLP(inputs.width, n_outputs, config, inputs)
    return MLP(inputs, n_outputs, config)


def state_shapes(inputs: InputLayout | int, n_outputs: int, config: ModelConfig) -> dict[str, tuple]:
    """Name -> (shape, dtype) of every tensor in ``build_model(inputs, n_outputs, config).state_dict()``,
    worked out from the layout and the config without building anything.

    Checking a saved model's weights needs only these; building the network on the meta device instead
    runs its initialisers there, and torch implements several of those (``normal_``, a tensor times a
    number) for meta tensors in Python code that imports ``torch._dynamo`` (about 70 MB and a second).
    A test compares this with the state dict of the built network for every kind of layer.
    """
    floating = torch.get_default_dtype()
    shapes: dict[str, tuple] = {}
    layout = inputs if isinstance(inputs, InputLayout) else None
    width = inputs.width if layout is not None else inputs
    if FeatureInputs.needed(layout, config):
        dim = config.embedding_dim
        numeric = len(periodic_columns(layout, config))
        if numeric:
            shapes["inputs.periodic.frequencies"] = ((numeric, FREQUENCIES), floating)
            shapes["inputs.periodic.weight"] = ((numeric, 2 * FREQUENCIES, dim), floating)
            shapes["inputs.periodic.bias"] = ((numeric, dim), floating)
        for k, (_, n) in enumerate(layout.codes):
            shapes[f"inputs.embeddings.{k}.weight"] = ((n, dim), floating)
        width = width - len(layout.codes) + (numeric + len(layout.codes)) * dim
    index = 0  # position in MLP.layers, as the constructor appends
    for units in config.hidden:
        shapes[f"layers.{index}.weight"] = ((units, width), floating)
        shapes[f"layers.{index}.bias"] = ((units,), floating)
        index += 1
        if config.norm in ("batch", "layer"):
            shapes[f"layers.{index}.weight"] = ((units,), floating)
            shapes[f"layers.{index}.bias"] = ((units,), floating)
            if config.norm == "batch":
                shapes[f"layers.{index}.running_mean"] = ((units,), floating)
                shapes[f"layers.{index}.running_var"] = ((units,), floating)
                shapes[f"layers.{index}.num_batches_tracked"] = ((), torch.int64)
            index += 1
        index += (config.activation != "linear") + (config.dropout > 0)
        width = units
    shapes[f"layers.{index}.weight"] = ((n_outputs, width), floating)
    shapes[f"layers.{index}.bias"] = ((n_outputs,), floating)
    return shapes


@dataclass(frozen=True)
class Preset:
    """A named model with the training settings the tutorial used for it."""

    description: str
    model: ModelConfig
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


_TUTORIAL_SGD = {"optimizer": "sgd", "lr": 0.1, "batch_size": None, "patience": 0, "schedule": "none", "weight_decay": 0.0,
                 "label_smoothing": 0.0}
# The tutorial standardises its inputs and feeds them to the first layer as they are; pinned here so that
# the learner's presets keep reproducing it whatever the default recipe becomes.
_TUTORIAL_INPUTS = {"numeric_embedding": "none"}
_TUTORIAL_DATA = {"scaling": "standard", "onehot_max": None}

PRESETS: dict[str, Preset] = {
    "circle-v0": Preset(
        "the tutorial's first model: 2-5-1, no activation (draws a straight line)",
        ModelConfig(hidden=(5,), activation="linear", dropout=0.0, norm="none", **_TUTORIAL_INPUTS),
        {**_TUTORIAL_SGD, "epochs": 100}, _TUTORIAL_DATA,
    ),
    "circle-v1": Preset(
        "more layers, units and epochs: 2-10-10-1, still linear",
        ModelConfig(hidden=(10, 10), activation="linear", dropout=0.0, norm="none", **_TUTORIAL_INPUTS),
        {**_TUTORIAL_SGD, "epochs": 1000}, _TUTORIAL_DATA,
    ),
    "circle-v2": Preset(
        "circle-v1 with ReLU between layers: the non-linearity that bends the boundary",
        ModelConfig(hidden=(10, 10), activation="relu", dropout=0.0, norm="none", **_TUTORIAL_INPUTS),
        {**_TUTORIAL_SGD, "epochs": 1000}, _TUTORIAL_DATA,
    ),
    "blob": Preset(
        "the tutorial's multiclass model: 2-8-8-4, linear",
        ModelConfig(hidden=(8, 8), activation="linear", dropout=0.0, norm="none", **_TUTORIAL_INPUTS),
        {**_TUTORIAL_SGD, "epochs": 100}, _TUTORIAL_DATA,
    ),
    "default": Preset("torchclf's default: periodic numeric and category embeddings into 256-256 ReLU, dropout "
                      "0.2, AdamW, label smoothing, early stopping", ModelConfig(), {}),
}
