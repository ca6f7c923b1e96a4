"""Frozen, validated configuration: what to build, how to train, how to split.

Each field maps one to one onto a command-line flag, and the whole
:class:`RunConfig` is saved with the model. A bad value raises
:class:`~torchclf.errors.TorchclfError` naming the field as soon as the object
is built, before any work starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from torchclf.errors import TorchclfError

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "linear")
NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("none", "plateau", "cosine")
PRECISIONS = ("float32", "bfloat16", "float16")


def _fail(cls: type, name: str, value, expected: str) -> None:
    raise TorchclfError(f"{cls.__name__}.{name}: got {value!r}, expected {expected}")


def _choice(obj, name: str, options: tuple[str, ...]) -> None:
    if getattr(obj, name) not in options:
        _fail(type(obj), name, getattr(obj, name), "one of " + ", ".join(options))


@dataclass(frozen=True)
class ModelConfig:
    """The network: hidden layer sizes, activation, dropout and normalisation."""

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    dropout: float = 0.2
    norm: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            _fail(type(self), "hidden", self.hidden, "positive layer sizes such as 64,64")
        _choice(self, "activation", ACTIVATIONS)
        _choice(self, "norm", NORMS)
        if not 0.0 <= self.dropout < 1.0:
            _fail(type(self), "dropout", self.dropout, "a probability in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """How the engine trains: epochs, batches, optimizer, stopping, device, seed.

    ``batch_size`` None means full batch (the tutorial's loop). ``patience`` 0
    turns early stopping off. ``eval_every`` validates every N epochs.
    ``threads`` None lets the engine choose (one thread for small models).
    ``precision`` bfloat16/float16 autocasts the forward pass (float16 on CUDA
    only); ``compile`` hands the model to ``torch.compile``.
    """

    epochs: int = 300
    batch_size: int | None = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.0
    schedule: str = "plateau"
    patience: int = 30
    seed: int = 2
    device: str = "auto"
    eval_every: int = 1
    log_every: int = 0
    threads: int | None = None
    class_weight: str | None = None
    precision: str = "float32"
    compile: bool = False

    def __post_init__(self) -> None:
        cls = type(self)
        if self.epochs < 1:
            _fail(cls, "epochs", self.epochs, "at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            _fail(cls, "batch_size", self.batch_size, "a positive integer or 'full'")
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "device", DEVICES)
        _choice(self, "schedule", SCHEDULES)
        if not self.lr > 0:
            _fail(cls, "lr", self.lr, "a positive learning rate such as 0.001")
        if self.weight_decay < 0:
            _fail(cls, "weight_decay", self.weight_decay, "0 or more")
        if not 0 <= self.momentum < 1:
            _fail(cls, "momentum", self.momentum, "a value in [0, 1)")
        if self.patience < 0:
            _fail(cls, "patience", self.patience, "0 (off) or more epochs")
        if self.eval_every < 1:
            _fail(cls, "eval_every", self.eval_every, "at least 1")
        if self.log_every < 0:
            _fail(cls, "log_every", self.log_every, "0 (automatic) or more epochs")
        if self.threads is not None and self.threads < 1:
            _fail(cls, "threads", self.threads, "at least 1")
        if self.class_weight not in (None, "balanced"):
            _fail(cls, "class_weight", self.class_weight, "None or 'balanced'")
        _choice(self, "precision", PRECISIONS)


@dataclass(frozen=True)
class DataConfig:
    """How rows are split and columns encoded."""

    test_size: float = 0.2
    validation_size: float = 0.1
    max_categories: int = 50

    def __post_init__(self) -> None:
        cls = type(self)
        if not 0 <= self.test_size < 1:
            _fail(cls, "test_size", self.test_size, "a fraction in [0, 1)")
        if not 0 <= self.validation_size < 1:
            _fail(cls, "validation_size", self.validation_size, "a fraction in [0, 1)")
        if self.test_size + self.validation_size >= 0.9:
            _fail(cls, "validation_size", self.validation_size, "test_size + validation_size below 0.9")
        if self.max_categories < 1:
            _fail(cls, "max_categories", self.max_categories, "at least 1")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; saved in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "auto"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.task not in ("auto", "binary", "multiclass", "multilabel"):
            _fail(type(self), "task", self.task, "auto, binary, multiclass or multilabel")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        def build(kind, values):
            known = {f.name for f in fields(kind)}
            unknown = set(values) - known
            if unknown:
                raise TorchclfError(f"{kind.__name__}: unknown field(s) {sorted(unknown)}")
            return kind(**values)

        try:
            return cls(
                model=build(ModelConfig, dict(d.get("model", {}))),
                train=build(TrainConfig, dict(d.get("train", {}))),
                data=build(DataConfig, dict(d.get("data", {}))),
                task=d.get("task", "auto"),
                preset=d.get("preset"),
            )
        except TypeError as exc:
            raise TorchclfError(f"invalid configuration: {exc}") from None


def with_overrides(config: RunConfig, **sections: dict) -> RunConfig:
    """A copy of ``config`` with fields of ``model``/``train``/``data`` replaced."""
    parts = {name: replace(getattr(config, name), **values) for name, values in sections.items() if values}
    return replace(config, **parts)
