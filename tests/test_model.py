"""The network builder and the tutorial's presets, checked against torch.nn.functional and the tutorial's text."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchclf.config import ModelConfig
from torchclf.model import DROP_LEVELS, MLP, PRESETS, Dropout, build_model, dropout, state_shapes
from torchclf.preprocess import InputLayout

# The functional form of each activation name: the oracle for the modules the builder picks.
FUNCTIONAL = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda z: z,
}
MODULES = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
           "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def layer_kinds(model: MLP) -> list[tuple]:
    """Each layer as (class name, defining sizes), in order."""
    out = []
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            out.append(("Linear", layer.in_features, layer.out_features))
        elif isinstance(layer, nn.BatchNorm1d):
            out.append(("BatchNorm1d", layer.num_features))
        elif isinstance(layer, nn.LayerNorm):
            out.append(("LayerNorm", tuple(layer.normalized_shape)))
        elif isinstance(layer, nn.Dropout):
            out.append(("Dropout", layer.p))
        else:
            out.append((type(layer).__name__,))
    return out


def linear_parameter_count(sizes: list[int]) -> int:
    """Weights plus biases of a chain of Linear layers of the given widths."""
    return sum((a + 1) * b for a, b in pairwise(sizes))


# ----- layer order -------------------------------------------------------------------
def test_block_order_is_linear_norm_activation_dropout():
    model = build_model(7, 3, ModelConfig(hidden=(6, 4), activation="tanh", dropout=0.3, norm="batch"))
    assert layer_kinds(model) == [
        ("Linear", 7, 6), ("BatchNorm1d", 6), ("Tanh",), ("Dropout", 0.3),
        ("Linear", 6, 4), ("BatchNorm1d", 4), ("Tanh",), ("Dropout", 0.3),
        ("Linear", 4, 3),
    ]


def test_layer_norm_and_no_dropout():
    model = build_model(2, 1, ModelConfig(hidden=(5,), activation="gelu", dropout=0.0, norm="layer"))
    assert layer_kinds(model) == [("Linear", 2, 5), ("LayerNorm", (5,)), ("GELU",), ("Linear", 5, 1)]


def test_linear_activation_adds_no_module():
    model = build_model(3, 2, ModelConfig(hidden=(4, 4), activation="linear", dropout=0.0, norm="none"))
    assert layer_kinds(model) == [("Linear", 3, 4), ("Linear", 4, 4), ("Linear", 4, 2)]


def test_no_hidden_layers_is_logistic_regression():
    model = build_model(5, 4, ModelConfig(hidden=(), dropout=0.0))
    assert layer_kinds(model) == [("Linear", 5, 4)]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_activation_name_builds_its_module(name):
    model = build_model(2, 1, ModelConfig(hidden=(3,), activation=name, dropout=0.0))
    assert [type(m) for m in model.layers] == [nn.Linear, MODULES[name], nn.Linear]


# ----- forward pass --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_forward_equals_the_functional_computation(name):
    torch.manual_seed(1)
    model = build_model(4, 3, ModelConfig(hidden=(6, 5), activation=name, dropout=0.0, norm="none"))
    x = torch.randn(9, 4)
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    act = FUNCTIONAL[name]
    expected = F.linear(act(F.linear(act(F.linear(x, linears[0].weight, linears[0].bias)),
                                     linears[1].weight, linears[1].bias)), linears[2].weight, linears[2].bias)
    out = model(x)
    assert out.shape == (9, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_output_shape_and_recorded_sizes():
    model = build_model(11, 7, ModelConfig(hidden=(8,), dropout=0.1))
    assert (model.n_inputs, model.n_outputs) == (11, 7)
    assert model(torch.zeros(13, 11)).shape == (13, 7)
    assert model(torch.zeros(1, 11)).shape == (1, 7)


def test_dropout_acts_in_training_only_and_batch_norm_uses_running_stats_in_eval():
    torch.manual_seed(0)
    model = build_model(4, 2, ModelConfig(hidden=(32,), activation="relu", dropout=0.5, norm="batch"))
    x = torch.randn(16, 4)
    model.train()
    assert not torch.equal(model(x), model(x))  # a fresh dropout mask each pass
    model.eval()
    first = model(x)
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    # Eval mode: BatchNorm normalises with the running statistics, dropout is the identity.
    lin, bn, _, _, head = model.layers
    h = F.relu(F.batch_norm(lin(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps))
    torch.testing.assert_close(first, head(h), rtol=0, atol=1e-6)



# ----- dropout on the CPU ----------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_cpu_dropout_drops_p_of_the_elements_and_scales_the_rest_to_keep_the_mean(p):
    """Over 4M elements each fraction is within 4.5 standard deviations of its expectation; a biased byte
    of the random draws (a top bit always 0, say) would move the dropped fraction by a quarter of p or more."""
    cut = round(p * DROP_LEVELS)
    x = torch.randn(1000, 4000)
    torch.manual_seed(7)
    y = dropout(x, p, True)
    dropped = y == 0
    n = x.numel()
    assert abs(dropped.float().mean().item() - cut / DROP_LEVELS) < 4.5 * (p * (1 - p) / n) ** 0.5
    # Every element is dropped or kept, and each quarter of a 64-bit draw decides its own element.
    torch.testing.assert_close(y[~dropped], x[~dropped] * (DROP_LEVELS / (DROP_LEVELS - cut)), rtol=1e-6, atol=0)
    for k in range(4):
        share = dropped.flatten()[k::4].float().mean().item()
        assert abs(share - cut / DROP_LEVELS) < 4.5 * (p * (1 - p) / (n / 4)) ** 0.5, k


def test_cpu_dropout_is_seeded_by_torch_and_its_gradient_uses_the_same_mask():
    x = torch.randn(64, 33, requires_grad=True)  # 64 x 33 is not a multiple of the 4 decisions per draw
    torch.manual_seed(3)
    y = dropout(x, 0.3, True)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.3, True), y, rtol=0, atol=0)
    y.sum().backward()
    scale = DROP_LEVELS / (DROP_LEVELS - round(0.3 * DROP_LEVELS))
    torch.testing.assert_close(x.grad, torch.where(y == 0, 0.0, scale), rtol=0, atol=0)
    # Outside training, with p 0, or on an empty batch: torch's dropout (the identity here).
    for args in ((x, 0.3, False), (x, 0.0, True), (x[:0], 0.3, True)):
        assert torch.equal(dropout(*args), args[0])
    # p = 1 drops everything, as torch's does.
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


def test_the_network_drops_with_torchclfs_dropout_and_stays_a_torch_dropout():
    model = build_model(4, 2, ModelConfig(hidden=(32,), activation="relu", dropout=0.25))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [type(m) for m in drops] == [Dropout]
    x = torch.randn(16, 4)
    torch.manual_seed(5)
    out = model(x)
    lin, act, _, head = model.layers
    torch.manual_seed(5)
    torch.testing.assert_close(out, head(dropout(act(lin(x)), 0.25, True)), rtol=0, atol=0)


@pytest.mark.parametrize("norm, extra", [("none", 0), ("batch", 2 * (6 + 4)), ("layer", 2 * (6 + 4))])
def test_parameter_count(norm, extra):
    model = build_model(7, 3, ModelConfig(hidden=(6, 4), activation="relu", dropout=0.2, norm=norm))
    assert sum(p.numel() for p in model.parameters()) == linear_parameter_count([7, 6, 4, 3]) + extra


# ----- the tutorial's presets ---------------------------------------------------------
# The tutorial (shared/seed): CircleModelV0 is Linear(2, 5) -> Linear(5, 1) trained 100 epochs;
# V1 adds a layer and units, 2-10-10-1, 1000 epochs; V2 is V1 with ReLU between the layers;
# BlobModel is 2-8-8-4 with the ReLUs commented out, 100 epochs; all with SGD(lr=0.1) on the full batch.
TUTORIAL = {
    "circle-v0": ([2, 5, 1], "linear", 100, 21),
    "circle-v1": ([2, 10, 10, 1], "linear", 1000, 151),
    "circle-v2": ([2, 10, 10, 1], "relu", 1000, 151),
    "blob": ([2, 8, 8, 4], "linear", 100, 132),
}


@pytest.mark.parametrize("name", sorted(TUTORIAL))
def test_presets_are_the_tutorial_models(name):
    sizes, activation, epochs, n_params = TUTORIAL[name]
    preset = PRESETS[name]
    assert preset.model == ModelConfig(hidden=tuple(sizes[1:-1]), activation=activation, dropout=0.0, norm="none",
                                       numeric_embedding="none")
    model = build_model(sizes[0], sizes[-1], preset.model)
    expected = [("Linear", a, b) for a, b in pairwise(sizes)]
    if activation == "relu":
        expected = [expected[0], ("ReLU",), expected[1], ("ReLU",), expected[2]]
    assert layer_kinds(model) == expected
    assert sum(p.numel() for p in model.parameters()) == n_params == linear_parameter_count(sizes)
    assert preset.train == {"optimizer": "sgd", "lr": 0.1, "batch_size": None, "patience": 0, "schedule": "none",
                            "weight_decay": 0.0, "label_smoothing": 0.0, "epochs": epochs}


def test_the_default_preset_is_the_library_default():
    assert PRESETS["default"].model == ModelConfig()
    assert PRESETS["default"].train == {}
    assert sorted(PRESETS) == ["blob", "circle-v0", "circle-v1", "circle-v2", "default"]


# ----- the weights a saved model must hold, without building it ------------------------------
@pytest.mark.parametrize("inputs, config", [
    (7, ModelConfig(hidden=(6, 4), activation="relu", dropout=0.2, norm="batch")),
    (7, ModelConfig(hidden=(), numeric_embedding="periodic")),  # plain inputs: no embeddings whatever the config
    (InputLayout(9, numeric=(0, 2, 5), codes=((3, 4), (7, 11))),
     ModelConfig(hidden=(5, 3), activation="linear", dropout=0.0, norm="layer", embedding_dim=2)),
    (InputLayout(9, numeric=(0, 2, 5), codes=((3, 4),)),
     ModelConfig(hidden=(5,), activation="tanh", dropout=0.1, norm="batch", numeric_embedding="none")),
    (InputLayout(6, numeric=(0, 1, 2, 3, 4, 5)), ModelConfig(hidden=(4, 4, 2), norm="none", embedding_dim=3)),
    (InputLayout(4, numeric=(0, 1)), ModelConfig(hidden=(3,), numeric_embedding="none")),
    (InputLayout(5, numeric=(0, 1, 2), codes=((4, 6),)), ModelConfig(hidden=(3,), periodic_max=2)),  # too many
])
def test_state_shapes_are_the_built_networks(inputs, config):
    expected = {name: (tuple(t.shape), t.dtype) for name, t in build_model(inputs, 5, config).state_dict().items()}
    assert state_shapes(inputs, 5, config) == expected
    assert list(state_shapes(inputs, 5, config)) == list(expected)  # the same order: the first misfit reported


def test_state_shapes_of_a_huge_network_cost_nothing():
    shapes = state_shapes(InputLayout(3, numeric=(0,), codes=((1, 10**6),)), 2, ModelConfig(hidden=(10**5, 10**5)))
    assert shapes["inputs.embeddings.0.weight"] == ((10**6, 8), torch.float32)
    assert shapes["layers.0.weight"] == ((10**5, 2 + 2 * 8), torch.float32)  # 2 plain columns, 2 embedded
    assert shapes["layers.3.weight"] == ((10**5, 10**5), torch.float32)  # after ReLU and dropout
    assert shapes["layers.6.weight"] == ((2, 10**5), torch.float32)
