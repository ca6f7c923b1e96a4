"""torchclf: train, evaluate, explain and serve PyTorch classifiers on tabular data.

Heavy modules (torch, pandas, scikit-learn) load on first use, so that
``import torchclf`` and the command line start quickly.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "train": ("torchclf.api", "train"),
    "load": ("torchclf.api", "load"),
    "evaluate": ("torchclf.api", "evaluate"),
    "make_config": ("torchclf.api", "make_config"),
    "prepare": ("torchclf.api", "prepare"),
    "fit": ("torchclf.api", "fit"),
    "run": ("torchclf.api", "run"),
    "resume": ("torchclf.api", "resume"),
    "TrainResult": ("torchclf.api", "TrainResult"),
    "RunSpec": ("torchclf.spec", "RunSpec"),
    "PARAMS": ("torchclf.config", "PARAMS"),
    "Predictor": ("torchclf.predictor", "Predictor"),
    "RunConfig": ("torchclf.config", "RunConfig"),
    "ModelConfig": ("torchclf.config", "ModelConfig"),
    "TrainConfig": ("torchclf.config", "TrainConfig"),
    "DataConfig": ("torchclf.config", "DataConfig"),
    "Task": ("torchclf.task", "Task"),
    "TorchclfError": ("torchclf.errors", "TorchclfError"),
    "NeuralNetClassifier": ("torchclf.estimator", "NeuralNetClassifier"),
    "tune": ("torchclf.tune", "tune"),  # needs the tune extra (Optuna)
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchclf' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
