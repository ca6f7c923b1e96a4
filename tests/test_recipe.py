"""The default recipe's parts: robust scaling, embedded categories, periodic numeric embeddings, batch size
from the data, and that the tutorial's presets keep the tutorial's plain inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from torchclf import api, artifact
from torchclf.config import ModelConfig, RunConfig, batch_rows, with_values
from torchclf.errors import TorchclfError
from torchclf.model import PRESETS, FeatureInputs, PeriodicEmbedding, build_model
from torchclf.preprocess import IQR_PER_STD, SMOOTH_CLIP, InputLayout, Preprocessor


# ----- robust scaling ------------------------------------------------------------------
def test_robust_scaling_uses_median_and_iqr_then_clips_smoothly():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 1000.0, np.nan]
    pre = Preprocessor(scaling="robust").fit(pd.DataFrame({"x": values}))
    spec = pre.columns[0]
    q25, median, q75 = 2.0, 3.0, 5.0  # of 1, 2, 3, 4, 5, 1000 (the empirical distribution's inverse)
    assert (spec.median, spec.mean) == (median, median)
    assert spec.scale == pytest.approx((q75 - q25) / IQR_PER_STD)
    z = (np.array([1, 2, 3, 4, 5, 1000, median]) - median) / spec.scale
    expected = z / np.sqrt(1 + (z / SMOOTH_CLIP) ** 2)
    out = pre.transform(pd.DataFrame({"x": values}))
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], [0, 0, 0, 0, 0, 0, 1])
    assert abs(out[5, 0]) < SMOOTH_CLIP  # the outlier is squeezed, not passed through at 600+


def test_robust_scaling_without_an_iqr_falls_back_to_the_standard_deviation():
    values = np.array([0.0] * 9 + [1.0])  # a rare flag: q25 == q75
    pre = Preprocessor(scaling="robust").fit(pd.DataFrame({"flag": values}))
    assert pre.columns[0].scale == pytest.approx(values.std())
    constant = Preprocessor(scaling="robust").fit(pd.DataFrame({"c": [3.0] * 4, "x": [1.0, 2, 3, 4]}))
    assert constant.columns[0].scale == 1.0


def test_robust_scaling_counts_sample_weights_as_repeated_rows():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 10.0]})
    weighted = Preprocessor(scaling="robust").fit(frame, sample_weight=[1, 3, 1, 2]).columns[0]
    repeated = Preprocessor(scaling="robust").fit(pd.DataFrame({"x": [1.0, 2, 2, 2, 3, 10, 10]})).columns[0]
    assert (weighted.median, weighted.scale) == (repeated.median, repeated.scale) == (2.0, 8.0 / IQR_PER_STD)


def test_block_and_column_paths_agree_under_robust_scaling(monkeypatch):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.lognormal(size=50), "b": rng.normal(size=50)})
    frame.loc[4, "a"] = np.nan
    pre = Preprocessor(scaling="robust").fit(frame)
    block = pre.transform(frame)
    monkeypatch.setattr("torchclf.preprocess.SMALL_FRAME_ROWS", 0)
    np.testing.assert_array_equal(pre.transform(frame), block)


# ----- embedded categories -----------------------------------------------------------------
def category_frame():
    return pd.DataFrame({
        "x": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5],
        "city": ["a", "b", "c", "a", "b", "c", "d", None],
        "plan": ["p", "q", "p", "q", "p", "q", "p", "q"],
    })


def test_columns_over_onehot_max_become_one_code_column_and_rare_categories_share_other():
    pre = Preprocessor(onehot_max=2).fit(category_frame())
    city = pre.columns[1]
    # a, b, c twice each; d and the missing value once: below MIN_EMBEDDED_ROWS, so <other>
    assert (city.embed, city.categories) == (True, ["a", "b", "c"])
    assert pre.output_names == ["x", "city#code", "plan=p", "plan=q", "plan=<other>"]
    new = pd.DataFrame({"x": [1.0, 2.0, 3.0], "city": ["c", "zzz", None], "plan": ["q", "p", "r"]})
    np.testing.assert_array_equal(pre.transform(new)[:, 1], [2, 3, 3])
    assert pre.layout() == InputLayout(5, numeric=(0,), codes=((1, 4),))


def test_embedded_columns_survive_the_manifest_round_trip_and_old_manifests_load():
    pre = Preprocessor(onehot_max=2, scaling="robust").fit(category_frame())
    again = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(category_frame()), pre.transform(category_frame()))
    old = pre.to_dict()
    del old["scaling"], old["onehot_max"]
    for c in old["columns"]:
        c.pop("clip"), c.pop("embed")
    legacy = Preprocessor.from_dict(old)
    assert (legacy.scaling, legacy.onehot_max, legacy.columns[1].embed, legacy.columns[0].clip) == (
        "standard", None, False, 0.0)


@pytest.mark.parametrize("field, value, text", [
    ("scaling", "quantile", "preprocess.scaling must be one of standard, robust"),
    ("onehot_max", 0, "preprocess.onehot_max must be a positive integer or null"),
])
def test_hostile_preprocessing_settings_are_refused(field, value, text):
    state = Preprocessor(onehot_max=2).fit(category_frame()).to_dict()
    state[field] = value
    with pytest.raises(TorchclfError, match=f"invalid manifest: {text}"):
        Preprocessor.from_dict(state)


def test_hostile_column_fields_are_refused():
    state = Preprocessor(onehot_max=2).fit(category_frame()).to_dict()
    state["columns"][0]["clip"] = -1.0
    with pytest.raises(TorchclfError, match=r"columns\[0\].clip must be 0 \(off\) or positive"):
        Preprocessor.from_dict(state)
    state["columns"][0]["clip"] = 0.0
    state["columns"][1]["embed"] = "yes"
    with pytest.raises(TorchclfError, match=r"columns\[1\].embed must be true or false"):
        Preprocessor.from_dict(state)


# ----- the network's inputs -----------------------------------------------------------------
def test_feature_inputs_pass_numbers_and_look_up_codes():
    torch.manual_seed(0)
    layout = InputLayout(4, numeric=(0, 2), codes=((1, 5),))
    inputs = FeatureInputs(layout, ModelConfig(embedding_dim=3, numeric_embedding="none"))
    x = torch.tensor([[0.5, 4.0, -1.0, 1.0], [2.0, 0.0, 3.0, 0.0]])
    out = inputs(x)
    table = inputs.embeddings[0].weight
    expected = torch.cat([x[:, [0, 2, 3]], table[[4, 0]]], dim=1)
    torch.testing.assert_close(out, expected)
    assert inputs.width == 6


def test_periodic_embedding_is_relu_of_a_per_column_linear_map_of_cos_and_sin():
    torch.manual_seed(0)
    emb = PeriodicEmbedding(2, 4)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    out = emb(x)
    for c in range(2):
        angle = 2 * torch.pi * x[:, c:c + 1] * emb.frequencies[c]
        feats = torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)
        torch.testing.assert_close(out[:, 4 * c:4 * c + 4], torch.relu(feats @ emb.weight[c] + emb.bias[c]))


def test_plain_inputs_build_the_same_network_as_before():
    torch.manual_seed(1)
    plain = build_model(InputLayout(3, numeric=(0, 1, 2)), 2, ModelConfig(numeric_embedding="none"))
    assert plain.inputs is None and list(plain.state_dict())[0] == "layers.0.weight"
    with_codes = build_model(InputLayout(3, numeric=(0,), codes=((1, 7), (2, 9))), 2,
                             ModelConfig(numeric_embedding="periodic", embedding_dim=5, hidden=(4,)))
    assert with_codes.layers[0].in_features == 1 + 5 + 2 * 5
    assert with_codes(torch.tensor([[0.1, 6.0, 8.0]])).shape == (1, 2)


def test_a_run_with_embeddings_saves_loads_and_predicts_the_same(tmp_path, no_pictures_here):
    rng = np.random.default_rng(0)
    n = 240
    city = rng.choice([f"c{i}" for i in range(30)], n)
    x = rng.normal(size=n)
    frame = pd.DataFrame({"x": x, "city": city,
                          "label": np.where((x > 0) ^ np.isin(city, [f"c{i}" for i in range(15)]), "y", "n")})
    config = with_values(api.make_config(), dict(onehot_max=8, numeric_embedding="periodic", scaling="robust",
                                                 embedding_dim=4, hidden=(16,), epochs=3, patience=0, seed=5))
    result = api.run(api.RunSpec(frame, "label", config=config), out=tmp_path / "run")
    model = result.predictor.model
    assert model.inputs is not None and model.inputs.embeddings[0].num_embeddings == 31
    loaded = api.load(tmp_path / "run")
    probs = result.predictor.predict_proba(frame.drop(columns="label"))
    np.testing.assert_array_equal(loaded.predict_proba(frame.drop(columns="label")), probs)
    manifest = artifact.read_manifest(tmp_path / "run")
    assert manifest["preprocess"]["onehot_max"] == 8


# ----- training schedule -----------------------------------------------------------------
@pytest.mark.parametrize("rows, batch", [(100, 64), (5000, 64), (6200, 128), (14000, 256), (70000, 512)])
def test_batch_size_zero_is_chosen_from_the_training_rows(rows, batch):
    assert batch_rows(0, rows) == batch
    assert (batch_rows(48, rows), batch_rows(None, rows)) == (48, None)


# ----- the tutorial's presets --------------------------------------------------------------
@pytest.mark.parametrize("name", ["circle-v0", "circle-v1", "circle-v2", "blob"])
def test_tutorial_presets_keep_plain_standardised_inputs(name):
    config = api.make_config(name)
    assert (config.model.numeric_embedding, config.data.scaling, config.data.onehot_max,
            config.train.label_smoothing) == ("none", "standard", None, 0.0)
    assert PRESETS[name].data == {"scaling": "standard", "onehot_max": None}


# ----- refit on train + validation ----------------------------------------------------------
def small_config(**values) -> RunConfig:
    return with_values(api.make_config(), {"hidden": (16,), "epochs": 40, "patience": 5, "seed": 3,
                                           "calibration": "temperature", **values})


def test_refit_trains_a_fresh_network_on_train_and_validation_for_the_chosen_epochs():
    dataset = api.as_dataset("breast_cancer", None)
    first = api.fit(api.prepare(api.RunSpec(dataset, config=small_config(refit=False))))
    refit = api.fit(api.prepare(api.RunSpec(dataset, config=small_config(refit=True))))
    assert first.refit is None
    rows = first.splits.train.n_rows + first.splits.validation.n_rows
    assert (refit.refit["epochs"], refit.refit["rows"]) == (first.best_epoch, rows)
    # Early stopping, calibration and the validation scores are the first network's, unchanged.
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (first, refit)]
    assert untimed[0] == untimed[1]
    assert refit.metrics["validation"] == first.metrics["validation"]
    assert refit.predictor.calibration.to_dict() == first.predictor.calibration.to_dict()
    # The test rows are scored by another network, trained on more rows.
    assert refit.metrics["test"]["log_loss"] != first.metrics["test"]["log_loss"]
    w_first, w_refit = (r.predictor.model.state_dict()["layers.0.weight"] for r in (first, refit))
    assert not torch.equal(w_first, w_refit)


def test_refit_needs_validation_rows_and_a_fresh_network():
    dataset = api.as_dataset("iris", None)
    no_validation = small_config(refit=True, validation_size=0.0, calibration=None, epochs=5)
    assert api.fit(api.prepare(api.RunSpec(dataset, config=no_validation))).refit is None
    trained = api.fit(api.prepare(api.RunSpec(dataset, config=small_config(refit=True, epochs=5))))
    again = api.prepare(api.RunSpec(dataset, config=small_config(refit=True, epochs=5)), start=trained.predictor)
    assert api.fit(again).refit is None


def test_replayed_learning_rates_follow_the_epochs_and_then_keep_the_last():
    from torchclf.callbacks import ReplayLearningRates, TrainState

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    state = TrainState(model=model, config=None, optimizer=optimizer, scheduler=None, generator=None,
                       callbacks=[])
    replay, seen = ReplayLearningRates([0.5, 0.25, 0.125]), []
    for epoch in range(1, 6):
        state.epoch = epoch
        replay.on_epoch_begin(state)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == [0.5, 0.25, 0.125, 0.125, 0.125]
