"""A run as one ONNX graph: raw feature columns in, labels and probabilities out.

The graph is built by hand with the ``onnx`` package's helper API (no
``torch.onnx``, which needs more packages) and repeats, operator by
operator, what the run's own code does: :meth:`Preprocessor.transform`
(imputation, missing flags, scaling, clipping and smooth clipping in
float64; one-hot with the ``<other>`` slot, or the category's code for an
embedded column), the :class:`~torchclf.model.MLP` in eval mode (with its
:class:`~torchclf.model.FeatureInputs`: periodic numeric embeddings and
category embeddings), and
:func:`decision_rule`'s logits -> probabilities -> labels (temperature
scaling and decision thresholds included). It has one input per raw column,
in training order: numeric columns as float64 of shape (n,) with NaN for a
missing value, categorical columns as strings of shape (n,) with
``"<missing>"`` for a missing value. Its outputs are ``label``, strings of
shape (n,) (for multilabel the positive labels joined by the run's
separator), and ``probabilities``, float32 of shape (n, n_classes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from torchclf.errors import TorchclfError
from torchclf.preprocess import MAX_SCALED, MISSING, _as_float

OPSET = 20  # StringConcat (the multilabel label text) is in opset 20: onnx>=1.15, onnxruntime>=1.17
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder-2 (text <-> integer codes)
IR_VERSION = 9  # the newest IR that onnxruntime 1.17 reads
OUTPUTS = ("label", "probabilities")
TOLERANCE = 1e-5  # largest difference from Predictor.predict_proba that a check accepts
# Periodic embeddings of up to this many numeric columns take one MatMul by a block-diagonal weight (C times the
# multiply-adds of a batched MatMul, but fewer operators, fused: the cheaper for few columns); more, a batched MatMul.
BLOCK_DIAGONAL_COLUMNS = 4
INSTALL = "pip install 'torchclf[deploy]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TorchclfError(f"export: needs the {module} package; install it with {INSTALL}") from None


# ----- logits -> probabilities -> labels -------------------------------------------
@dataclass(frozen=True)
class DecisionRule:
    """How a run's logits become probabilities and labels, as plain numbers.

    ``temperature`` (shape (n_outputs,), or None) divides the logits before
    the sigmoid/softmax; ``threshold`` (shape (n_outputs,)) is the cut for
    binary and multilabel outputs (unused for multiclass, which takes the argmax).
    """

    kind: str
    temperature: np.ndarray | None
    threshold: np.ndarray


def _as_vector(value, n: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, n)
    if array.size != n or not np.isfinite(array).all():
        raise TorchclfError(f"export: the run's {what} must be {n} finite number(s), got {value!r}; "
                            "re-train or re-calibrate the run")
    return array


def decision_rule(predictor) -> DecisionRule:
    """The predictor's temperature scaling and decision threshold (``Predictor.calibration`` and
    ``Predictor.threshold``; without them, no scaling and the task's own threshold).

    Raises
    ------
    TorchclfError
        For a calibration other than temperature scaling (isotonic curves have no ONNX form here).
    """
    task = predictor.task
    n = task.n_outputs
    threshold = getattr(predictor, "threshold", None)
    threshold = _as_vector(task.threshold if threshold is None else threshold, n, "decision threshold")
    calibration = getattr(predictor, "calibration", None)
    temperature = None
    if calibration is not None:
        state = calibration.to_dict()
        if state.get("method") != "temperature":
            raise TorchclfError(f"export: the run's {state.get('method')!r} calibration cannot be exported to ONNX "
                                "(temperature scaling can); re-train with --calibration temperature or none")
        temperature = _as_vector(state["temperatures"], n, "temperatures")
        if (temperature <= 0).any():
            raise TorchclfError(f"export: the run's temperatures must be positive, got {temperature.tolist()}")
    return DecisionRule(task.kind, temperature, threshold)


# ----- a tiny graph builder ---------------------------------------------------------
class _Graph:
    """Nodes and constants of one graph, with internal names that cannot clash with a feature's."""

    def __init__(self, taken: set[str], dtype: int):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = dtype  # the network's element type (onnx.TensorProto.FLOAT or DOUBLE)
        self.prefix = "torchclf/"
        while any(name.startswith(self.prefix) for name in taken):
            self.prefix = "_" + self.prefix
        self.nodes, self.constants, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}.{self.count}"

    def const(self, value, hint: str = "const") -> str:
        name = self.name(hint)
        self.constants.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], domain=domain or None, **attrs))
        return out


# ----- preprocessing ---------------------------------------------------------------
def _check_names(pre) -> None:
    for name in pre.feature_names:
        if name == "":
            raise TorchclfError("export: a feature column has an empty name, which ONNX reads as 'no input'; "
                                "rename the column and re-train")
        if name in OUTPUTS:
            raise TorchclfError(f"export: feature column {name!r} has the name of an output of the graph "
                                f"({', '.join(OUTPUTS)}); rename the column and re-train")


def _preprocess(g: _Graph, pre, dtype) -> str:
    """Graph inputs -> the encoded matrix of shape (n, n_inputs), as Preprocessor.transform makes it."""
    from onnx import TensorProto

    numeric = [c for c in pre.columns if c.kind == "numeric"]
    flagged = [k for k, c in enumerate(numeric) if c.missing_indicator]
    blocks, positions = [], {}  # positions: (column, slot) -> index in the concatenation below
    if numeric:
        axis1 = g.const(np.array([1], dtype=np.int64), "axis1")
        columns = [g.op("Unsqueeze", c.name, axis1) for c in numeric]
        # Concat along axis 1 checks that every column has the same number of rows.
        x = g.op("Concat", *columns, axis=1) if len(columns) > 1 else columns[0]
        missing = g.op("Or", g.op("IsNaN", x), g.op("IsInf", x))
        filled = g.op("Where", missing, g.const(np.array([c.median for c in numeric])), x)
        z = g.op("Div", g.op("Sub", filled, g.const(np.array([c.mean for c in numeric]))),
                 g.const(np.array([c.scale for c in numeric])))
        z = g.op("Clip", z, g.const(np.float64(-MAX_SCALED)), g.const(np.float64(MAX_SCALED)))
        if any(c.clip > 0 for c in numeric):
            z = _smooth_clip(g, z, [c.clip for c in numeric])
        blocks.append(g.op("Cast", z, to=dtype))
        positions.update({(c.name, 0): k for k, c in enumerate(numeric)})
        if flagged:
            flags = g.op("Gather", missing, g.const(np.array(flagged, dtype=np.int64)), axis=1)
            blocks.append(g.op("Cast", flags, to=dtype))
            positions.update({(numeric[k].name, 1): len(numeric) + i for i, k in enumerate(flagged)})
    start = len(numeric) + len(flagged)
    for c in pre.columns:
        if c.kind != "categorical":
            continue
        codes = g.op("LabelEncoder", c.name, domain="ai.onnx.ml", keys_strings=list(c.categories),
                     values_int64s=list(range(len(c.categories))), default_int64=len(c.categories))
        if c.embed:  # one column holding the code as a number (exact in float32 below 2**24 codes)
            code = g.op("Cast", codes, to=dtype)
            blocks.append(g.op("Unsqueeze", code, g.const(np.array([1], dtype=np.int64), "axis1")))
            positions[(c.name, 0)] = start
            start += 1
            continue
        block = g.op("OneHot", codes, g.const(np.array([c.width], dtype=np.int64)),
                     g.const(np.array([0, 1], dtype=np.float32)))
        # onnxruntime's OneHot makes no float64, and 0/1 are exact in both types.
        blocks.append(block if dtype == TensorProto.FLOAT else g.op("Cast", block, to=dtype))
        positions.update({(c.name, k): start + k for k in range(c.width)})
        start += c.width
    x = g.op("Concat", *blocks, axis=1) if len(blocks) > 1 else blocks[0]
    order = [positions[(c.name, k)] for c in pre.columns for k in range(c.width)]
    if order != list(range(len(order))):  # back to the preprocessor's column order
        # As a MatMul by a 0/1 permutation matrix: exact for these values, all finite (clipped to +-MAX_SCALED,
        # flags, one-hot, codes): each output is one x times 1 plus zeros. Several times cheaper than
        # onnxruntime's Gather along axis 1.
        permutation = np.zeros((len(order), len(order)), dtype=np.float32 if dtype == TensorProto.FLOAT else np.float64)
        permutation[order, np.arange(len(order))] = 1
        x = g.op("MatMul", x, g.const(permutation, "permutation"))
    return x


def _smooth_clip(g: _Graph, z: str, clips: list[float]) -> str:
    """z / sqrt(1 + (z / clip)^2) per column of the float64 matrix ``z`` (n, n_numeric), as
    ``ColumnSpec.scale_values`` does.

    A column without clipping (clip 0) is divided by +inf instead: z / inf is 0 for the finite z
    that the Clip before leaves, so that column comes out bit for bit unchanged.
    """
    limits = g.const(np.array([c if c > 0 else np.inf for c in clips], dtype=np.float64), "clip")
    ratio = g.op("Div", z, limits)
    root = g.op("Sqrt", g.op("Add", g.const(np.float64(1.0)), g.op("Mul", ratio, ratio)))
    return g.op("Div", z, root)


# ----- the network -----------------------------------------------------------------
def _array(tensor, dtype) -> np.ndarray:
    return tensor.detach().to("cpu").numpy().astype(dtype, copy=False)


def _network(g: _Graph, model, x: str, np_dtype) -> str:
    """The MLP's layers in eval mode (dropout is the identity), as ONNX operators."""
    from torch import nn

    double = np_dtype == np.float64
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper holds the module itself
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential):
        raise TorchclfError(f"export: the network is a {type(model).__name__}, not torchclf's MLP; "
                            "only networks built by torchclf can be exported")
    if getattr(model, "inputs", None) is not None:
        x = _feature_inputs(g, model.inputs, x, np_dtype)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            inputs = [x, g.const(_array(layer.weight, np_dtype), "weight")]
            if layer.bias is not None:
                inputs.append(g.const(_array(layer.bias, np_dtype), "bias"))
            x = g.op("Gemm", *inputs, transB=1)
        elif isinstance(layer, nn.BatchNorm1d):
            if layer.running_mean is None:
                raise TorchclfError(f"export: layer {i} (BatchNorm1d) keeps no running statistics; "
                                    "only batch norm with running statistics can be exported")
            n = layer.num_features
            scale = _array(layer.weight, np_dtype) if layer.weight is not None else np.ones(n, np_dtype)
            shift = _array(layer.bias, np_dtype) if layer.bias is not None else np.zeros(n, np_dtype)
            x = g.op("BatchNormalization", x, g.const(scale), g.const(shift),
                     g.const(_array(layer.running_mean, np_dtype)), g.const(_array(layer.running_var, np_dtype)),
                     epsilon=float(layer.eps))
        elif isinstance(layer, nn.LayerNorm):
            n = layer.normalized_shape[-1]
            scale = _array(layer.weight, np_dtype) if layer.weight is not None else np.ones(n, np_dtype)
            shift = _array(layer.bias, np_dtype) if layer.bias is not None else np.zeros(n, np_dtype)
            x = g.op("LayerNormalization", x, g.const(scale), g.const(shift), axis=-1, epsilon=float(layer.eps))
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        else:
            x = _activation(g, layer, x, np_dtype, double, i)
    return x


def _feature_inputs(g: _Graph, inputs, x: str, np_dtype) -> str:
    """:class:`~torchclf.model.FeatureInputs`: the encoded matrix (n, n_inputs) -> the first layer's
    input (n, inputs.width): the columns that are not codes, the periodic embeddings of the numeric
    columns, then one embedding per code column, in that order."""
    from onnx import TensorProto

    from torchclf.model import FeatureInputs

    if not isinstance(inputs, FeatureInputs):
        raise TorchclfError(f"export: the network's inputs module is a {type(inputs).__name__}, not torchclf's "
                            "FeatureInputs; only networks built by torchclf can be exported")
    parts = []
    if inputs.dense.numel():
        dense = inputs.dense.cpu().numpy().astype(np.int64)
        # Without code columns every column passes: x itself, not a copy (a Gather along axis 1 costs
        # about 1 ms per 10,000 rows in onnxruntime).
        parts.append(x if not inputs.code_columns else _columns(g, x, dense, "dense"))
    if inputs.periodic is not None:
        numeric = _columns(g, x, inputs.numeric.cpu().numpy().astype(np.int64), "numeric")
        parts.append(_periodic(g, inputs.periodic, numeric, np_dtype))
    for j, table in zip(inputs.code_columns, inputs.embeddings):
        code = g.op("Cast", g.op("Gather", x, g.const(np.int64(j), "code"), axis=1), to=TensorProto.INT64)
        # As FeatureInputs' clamp: a code outside the table (none comes from the graph's own encoding) stays in it.
        code = g.op("Clip", code, g.const(np.int64(0)), g.const(np.int64(table.num_embeddings - 1)))
        parts.append(g.op("Gather", g.const(_array(table.weight, np_dtype), "embedding"), code, axis=0))
    return g.op("Concat", *parts, axis=1) if len(parts) > 1 else parts[0]


def _columns(g: _Graph, x: str, index: np.ndarray, hint: str) -> str:
    """Columns ``index`` of the matrix ``x`` (n, m): a Slice (one copy) when they are consecutive, else a Gather."""
    if len(index) and (np.diff(index) == 1).all():
        return g.op("Slice", x, g.const(index[:1], f"{hint}_start"), g.const(index[-1:] + 1, f"{hint}_end"),
                    g.const(np.array([1], dtype=np.int64), "axis1"))
    return g.op("Gather", x, g.const(index, hint), axis=1)


def _periodic(g: _Graph, periodic, x: str, np_dtype) -> str:
    """:class:`~torchclf.model.PeriodicEmbedding`: numeric columns (n, C) -> (n, C * dim), each
    column's ``dim`` values together (column 0's first), as its ``flatten(1)``."""
    n_columns, dim = periodic.bias.shape
    # (2 pi) x, then times the frequencies: the order and rounding of the module's forward.
    angle = g.op("Mul", g.op("Unsqueeze", x, g.const(np.array([2], dtype=np.int64), "axis2")),
                 g.const(np_dtype(2 * np.pi)))
    angle = g.op("Mul", angle, g.const(_array(periodic.frequencies, np_dtype), "frequencies"))  # (n, C, F)
    if np_dtype == np.float64:
        # onnxruntime has long had a float64 Sin but not a float64 Cos (its kernel list up to opset 22 has
        # float only): cos(a) is sin(a + pi/2), off by the rounding of the sum, about 1e-16 |a|.
        cos = g.op("Sin", g.op("Add", angle, g.const(np.float64(np.pi / 2))))
    else:
        cos = g.op("Cos", angle)
    features = g.op("Concat", cos, g.op("Sin", angle), axis=2)  # (n, C, 2F)
    if n_columns <= BLOCK_DIAGONAL_COLUMNS:
        # One MatMul with the columns' weights on the diagonal of a (C * 2F, C * dim) matrix: the products with
        # its zeros add exact zeros, and onnxruntime fuses it, the bias and the ReLU into one Gemm (no transposes).
        weight = _array(periodic.weight, np_dtype)
        block = np.zeros((n_columns * weight.shape[1], n_columns * dim), dtype=np_dtype)
        for c in range(n_columns):
            block[c * weight.shape[1]:(c + 1) * weight.shape[1], c * dim:(c + 1) * dim] = weight[c]
        flat = g.op("Reshape", features, g.const(np.array([0, block.shape[0]], dtype=np.int64), "shape"))
        out = g.op("MatMul", flat, g.const(block, "weight"))  # (n, C * dim), column 0's first
        return g.op("Relu", g.op("Add", out, g.const(_array(periodic.bias, np_dtype).reshape(-1), "bias")))
    # Columns first, so that one batched MatMul applies each column's own (2F, dim) weight.
    out = g.op("MatMul", g.op("Transpose", features, perm=[1, 0, 2]),
               g.const(_array(periodic.weight, np_dtype), "weight"))  # (C, n, dim)
    out = g.op("Relu", g.op("Add", out, g.const(_array(periodic.bias, np_dtype)[:, None, :], "bias")))
    # Shape (n, C * dim) with n copied from the input (0), which also holds for no rows.
    return g.op("Reshape", g.op("Transpose", out, perm=[1, 0, 2]),
                g.const(np.array([0, n_columns * dim], dtype=np.int64), "shape"))


def _activation(g: _Graph, layer, x: str, np_dtype, double: bool, i: int) -> str:
    from onnx import TensorProto
    from torch import nn

    if isinstance(layer, nn.ReLU):
        return g.op("Relu", x)
    if isinstance(layer, nn.Tanh):
        return g.op("Tanh", x)
    if isinstance(layer, nn.Sigmoid):
        return g.op("Sigmoid", x)
    if isinstance(layer, nn.SiLU):
        return g.op("Mul", x, g.op("Sigmoid", x))
    positive = g.op("Greater", x, g.const(np_dtype(0)))  # onnxruntime has no float64 LeakyRelu or Elu
    if isinstance(layer, nn.LeakyReLU):
        if not double:
            return g.op("LeakyRelu", x, alpha=float(layer.negative_slope))
        return g.op("Where", positive, x, g.op("Mul", x, g.const(np_dtype(layer.negative_slope))))
    if isinstance(layer, nn.ELU):
        if not double:
            return g.op("Elu", x, alpha=float(layer.alpha))
        below = g.op("Mul", g.op("Sub", g.op("Exp", x), g.const(np_dtype(1))), g.const(np_dtype(layer.alpha)))
        return g.op("Where", positive, x, below)
    if isinstance(layer, nn.GELU):
        half = g.op("Mul", x, g.const(np_dtype(0.5)))
        if layer.approximate == "tanh":
            cubic = g.op("Add", x, g.op("Mul", g.op("Mul", g.op("Mul", x, x), x), g.const(np_dtype(0.044715))))
            inner = g.op("Tanh", g.op("Mul", cubic, g.const(np_dtype(np.sqrt(2 / np.pi)))))
        else:
            scaled = g.op("Mul", x, g.const(np_dtype(1 / np.sqrt(2))))
            if double:  # onnxruntime's Erf is float32 only: about 1e-7 relative error in a float64 network
                scaled = g.op("Cast", scaled, to=TensorProto.FLOAT)
                inner = g.op("Cast", g.op("Erf", scaled), to=TensorProto.DOUBLE)
            else:
                inner = g.op("Erf", scaled)
        return g.op("Mul", half, g.op("Add", inner, g.const(np_dtype(1))))
    raise TorchclfError(f"export: layer {i} of the network ({type(layer).__name__}) has no ONNX form here; "
                        "export supports Linear, BatchNorm1d, LayerNorm, Dropout and torchclf's activations")


# ----- the decision ----------------------------------------------------------------
def _decision(g: _Graph, logits: str, rule: DecisionRule, classes: list, label_sep: str | None) -> None:
    """Logits -> ``probabilities`` and ``label``, in the steps and precision of the predictor.

    As :meth:`Predictor.probabilities` and :meth:`Predictor.decide`: a calibrated head (or a float64
    network) works in float64, an uncalibrated float32 one in float32; the threshold is compared in
    that type; a temperature-scaled multiclass label is the argmax of the logits (scaling never changes
    it). The ``probabilities`` output is float32 either way.
    """
    from onnx import TensorProto

    wide = rule.temperature is not None or g.dtype == TensorProto.DOUBLE
    kind, np_type = (TensorProto.DOUBLE, np.float64) if wide else (TensorProto.FLOAT, np.float32)
    z = logits if kind == g.dtype else g.op("Cast", logits, to=kind)
    if rule.temperature is not None:
        z = g.op("Div", z, g.const(rule.temperature.astype(np_type), "temperature"))
    names = [str(c) for c in classes]

    def output(p: str) -> None:
        g.op("Cast", p, to=TensorProto.FLOAT, out="probabilities")

    if rule.kind == "multiclass":
        proba = g.op("Softmax", z, axis=1)
        output(proba)
        index = g.op("ArgMax", z if rule.temperature is not None else proba, axis=1, keepdims=0)
        g.op("LabelEncoder", index, out="label", domain="ai.onnx.ml",
             keys_int64s=list(range(len(names))), values_strings=names, default_string="")
        return
    p = g.op("Sigmoid", z)
    threshold = g.const(rule.threshold.astype(np_type), "threshold")
    if rule.kind == "binary":
        output(g.op("Concat", g.op("Sub", g.const(np_type(1)), p), p, axis=1))
        positive = g.op("Cast", g.op("GreaterOrEqual", p, threshold), to=TensorProto.INT64)
        index = g.op("Reshape", positive, g.const(np.array([-1], dtype=np.int64)))
        g.op("LabelEncoder", index, out="label", domain="ai.onnx.ml",
             keys_int64s=[0, 1], values_strings=names, default_string="")
        return
    output(p)
    _joined_labels(g, p, threshold, names, "|" if label_sep is None else label_sep)


def _joined_labels(g: _Graph, p: str, threshold: str, names: list[str], sep: str) -> None:
    """Multilabel ``label``: the names of the positive labels joined by ``sep``, as LabelCoder.decode does."""
    from onnx import TensorProto

    positive = g.op("Cast", g.op("GreaterOrEqual", p, threshold), to=TensorProto.INT64)
    # Each cell becomes a code: 0 (negative), 1 (first positive of its row), 2 (a later positive),
    # offset by 3 per label so that one LabelEncoder turns all codes into "", "name" or "<sep>name".
    before = g.op("CumSum", positive, g.const(np.int64(1)), exclusive=1)
    later = g.op("Min", before, g.const(np.int64(1)))
    code = g.op("Mul", positive, g.op("Add", later, g.const(np.int64(1))))
    code = g.op("Add", code, g.const(np.arange(len(names), dtype=np.int64) * 3))
    keys = [3 * j + k for j in range(len(names)) for k in (1, 2)]
    values = [text for name in names for text in (name, sep + name)]
    pieces = g.op("LabelEncoder", code, domain="ai.onnx.ml", keys_int64s=keys, values_strings=values,
                  default_string="")
    columns = [g.op("Gather", pieces, g.const(np.int64(j)), axis=1) for j in range(len(names))]
    text = columns[0]
    for column in columns[1:]:
        text = g.op("StringConcat", text, column)
    g.op("Identity", text, out="label")


# ----- the whole graph -------------------------------------------------------------
def to_onnx(predictor):
    """The run as an ``onnx.ModelProto`` (raw columns -> ``label``, ``probabilities``).

    Raises
    ------
    TorchclfError
        When the onnx package is missing or a part of the run has no ONNX form.
    """
    import torch

    onnx = _require("onnx")
    from onnx import TensorProto, helper

    pre = predictor.preprocessor
    _check_names(pre)
    if pre.plan.dates:  # the graph takes raw columns, and ONNX has no operator that reads a date from text
        raise TorchclfError(f"export: column {pre.plan.dates[0].name!r} holds dates, which the ONNX graph cannot "
                            "read; predict with torchclf (or serve --backend torch), or re-train with the date "
                            "as numbers of your own (or --drop it)")
    dtype = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE}.get(predictor.dtype)
    if dtype is None:
        raise TorchclfError(f"export: the network's weights are {predictor.dtype}; only float32 and float64 "
                            "networks can be exported (re-train without a half-precision model)")
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    rule = decision_rule(predictor)
    g = _Graph(set(pre.feature_names), dtype)
    x = _preprocess(g, pre, dtype)
    logits = _network(g, predictor.model, x, np_dtype)
    _decision(g, logits, rule, predictor.classes, predictor.label_sep)
    n = "n"
    inputs = [helper.make_tensor_value_info(c.name, TensorProto.DOUBLE if c.kind == "numeric" else TensorProto.STRING,
                                            [n]) for c in pre.columns]
    outputs = [helper.make_tensor_value_info("label", TensorProto.STRING, [n]),
               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [n, len(predictor.classes)])]
    graph = helper.make_graph(g.nodes, "torchclf", inputs, outputs, g.constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                              producer_name="torchclf", producer_version=_version())
    model.ir_version = IR_VERSION
    model.doc_string = (f"torchclf {rule.kind} classifier: raw columns (float64 with NaN for missing; text with "
                        f"{MISSING!r} for missing) -> label, probabilities")
    helper.set_model_props(model, metadata(predictor, rule))
    onnx.checker.check_model(model, full_check=True)
    return model


def _version() -> str:
    from torchclf import __version__

    return __version__


def metadata(predictor, rule: DecisionRule | None = None) -> dict[str, str]:
    """What a caller without torchclf needs to know, as the graph's metadata (JSON texts)."""
    rule = rule or decision_rule(predictor)
    features = [{"name": c.name, "type": "number" if c.kind == "numeric" else "string"} for c in
                predictor.preprocessor.columns]
    return {
        "torchclf.task": rule.kind,
        "torchclf.classes": json.dumps([str(c) for c in predictor.classes]),
        "torchclf.features": json.dumps(features),
        "torchclf.missing_category": MISSING,
        "torchclf.label_sep": "|" if predictor.label_sep is None else predictor.label_sep,
        "torchclf.threshold": json.dumps(rule.threshold.tolist()),
        "torchclf.temperature": json.dumps(None if rule.temperature is None else rule.temperature.tolist()),
    }


def export_onnx(predictor, out: str | Path) -> Path:
    """Write the run's ONNX graph to ``out`` (atomically: a complete file or none)."""
    model = to_onnx(predictor)
    out = Path(out)
    if out.is_dir():
        raise TorchclfError(f"--out {out}: is a folder; give a file name such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----- feeding and checking a graph ------------------------------------------------
def onnx_inputs(predictor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw rows as the graph's inputs: float64 columns with NaN, text columns with ``"<missing>"``."""
    predictor.preprocessor.check_columns(frame)
    lookup = {str(c): c for c in frame.columns}
    feeds = {}
    for spec in predictor.preprocessor.columns:
        series = frame[lookup[spec.name]]
        if spec.kind == "numeric":
            feeds[spec.name] = _as_float(series)
        else:  # exactly the text Preprocessor.transform compares with the categories
            feeds[spec.name] = series.astype("object").where(series.notna(), MISSING).astype(str).to_numpy(object)
    return feeds


def session(model, threads: int = 1):
    """An onnxruntime session on the CPU for a path, bytes or ``onnx.ModelProto``."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Check:
    """How an ONNX graph agrees with the predictor on some rows."""

    rows: int
    max_difference: float  # largest absolute probability difference
    label_mismatches: int

    @property
    def ok(self) -> bool:
        return self.max_difference <= TOLERANCE and self.label_mismatches == 0


def check(predictor, model, frame: pd.DataFrame) -> Check:
    """Run ``model`` in onnxruntime on ``frame`` and compare with ``predict_proba`` and ``predict``."""
    sess = model if hasattr(model, "run") else session(model)
    labels, proba = sess.run(list(OUTPUTS), onnx_inputs(predictor, frame))
    expected = predictor.predict_proba(frame)
    expected_labels = [str(v) for v in predictor.predict(frame)]
    diff = float(np.abs(proba.astype(np.float64) - expected).max()) if len(frame) else 0.0
    mismatches = int(sum(a != b for a, b in zip(labels.tolist(), expected_labels)))
    return Check(len(frame), diff, mismatches)


def with_gaps(predictor, frame: pd.DataFrame, unseen: str = "never seen in training") -> pd.DataFrame:
    """A copy of ``frame`` in which about a third of the feature cells are missing and, in text
    columns, another third hold a category the run never saw (for checks of those paths)."""
    out = frame.copy()
    lookup = {str(c): c for c in out.columns}
    n = len(out)
    for j, spec in enumerate(predictor.preprocessor.columns):
        col = lookup[spec.name]
        where = (np.arange(n) + j) % 3
        if spec.kind == "numeric":
            out[col] = _as_float(out[col])
            out.loc[where == 0, col] = np.nan
        else:
            out[col] = out[col].astype(object)
            out.loc[where == 0, col] = None
            out.loc[where == 1, col] = unseen
    return out


def check_rows(predictor, model, frame: pd.DataFrame) -> Check:
    """:func:`check` on ``frame`` and on :func:`with_gaps` of it, as one result (2 * len(frame) rows)."""
    sess = model if hasattr(model, "run") else session(model)
    plain, gaps = check(predictor, sess, frame), check(predictor, sess, with_gaps(predictor, frame))
    return Check(plain.rows + gaps.rows, max(plain.max_difference, gaps.max_difference),
                 plain.label_mismatches + gaps.label_mismatches)
