"""The default recipe's parts: robust scaling, embedded categories, periodic numeric embeddings, batch size
from the data, and that the tutorial's presets keep the tutorial's plain inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from torchclf import api, artifact
from torchclf.config import PARAM, ModelConfig, RunConfig, batch_rows, with_values
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
    pre = Preprocessor(onehot_max=2, embed_rows=None).fit(category_frame())
    city = pre.columns[1]
    # a, b, c twice each; d and the missing value once: below MIN_EMBEDDED_ROWS, so <other>
    assert (city.embed, city.categories) == (True, ["a", "b", "c"])
    assert pre.output_names == ["x", "city#code", "plan=p", "plan=q", "plan=<other>"]
    new = pd.DataFrame({"x": [1.0, 2.0, 3.0], "city": ["c", "zzz", None], "plan": ["q", "p", "r"]})
    np.testing.assert_array_equal(pre.transform(new)[:, 1], [2, 3, 3])
    assert pre.layout() == InputLayout(5, numeric=(0,), codes=((1, 4),))


def names_frame(n_names: int = 150, rows: int = 200) -> pd.DataFrame:
    """``name``: n_names categories over ``rows`` rows (mostly one row each); ``city``: 20 of 10 rows each."""
    rng = np.random.default_rng(0)
    names = [f"n{i:03d}" for i in range(n_names)] + [f"n{i:03d}" for i in rng.integers(0, n_names, rows - n_names)]
    return pd.DataFrame({"name": names, "city": [f"c{i % 20:02d}" for i in range(rows)]})


def test_a_column_of_rare_categories_stays_one_hot_below_embed_rows():
    frame = names_frame()
    pre = Preprocessor(max_categories=100_000, onehot_max=16, embed_rows=8).fit(frame)
    name, city = pre.columns
    # name: 200 rows over 150 categories (1.3 each) stays one-hot, single-row categories included;
    # city: 200 rows over 20 categories (10 each) is embedded.
    assert (name.embed, len(name.categories), city.embed, len(city.categories)) == (False, 150, True, 20)
    assert pre.output_names[149:] == [f"name={name.categories[-1]}", "name=<other>", "city#code"]
    assert pre.layout() == InputLayout(152, numeric=(), codes=((151, 21),))
    # Without the rule (as before it, and as saved runs were) both are embedded, name without its rare ones.
    old = Preprocessor(max_categories=100_000, onehot_max=16, embed_rows=None).fit(frame)
    assert [(c.embed, len(c.categories)) for c in old.columns] == [(True, 43), (True, 20)]
    again = Preprocessor.from_dict(pre.to_dict())
    assert again.embed_rows == 8
    np.testing.assert_array_equal(again.transform(frame), pre.transform(frame))


def test_past_onehot_rare_max_categories_a_column_of_rare_ones_is_embedded_all_the_same(monkeypatch):
    monkeypatch.setattr("torchclf.preprocess.ONEHOT_RARE_MAX", 149)  # name has 150: one-hot would be too wide
    pre = Preprocessor(max_categories=100_000, onehot_max=16, embed_rows=8).fit(names_frame())
    assert [c.embed for c in pre.columns] == [True, True]


# A run folder written by torchclf 0.1 (commit b9c7aa8: `torchclf train rows.csv --target label --hidden 8
# --epochs 3`), with its `torchclf predict` output: its configuration has none of the recipe's rows.
RUN_0_1 = Path(__file__).parent / "data" / "run_0_1"


def test_saved_configs_without_the_recipe_rows_keep_what_they_did():
    assert (PARAM["embed_rows"].default, PARAM["periodic_max"].default, PARAM["patience_min"].default,
            PARAM["numeric_embedding"].default) == (8, 32, 15, "periodic")
    old = json.loads((RUN_0_1 / "model.json").read_text())["config"]
    assert "numeric_embedding" not in old["model"] and "patience_min" not in old["train"]
    loaded = RunConfig.from_dict(old)
    # Plain numeric inputs, a fixed wait, and embeddings chosen by the number of categories alone.
    assert (loaded.model.numeric_embedding, loaded.train.patience_min, loaded.data.embed_rows,
            loaded.model.periodic_max) == ("none", None, None, None)


def test_a_run_folder_of_0_1_loads_and_predicts_as_it_did(tmp_path):
    code, _, err = run_cli("predict", str(RUN_0_1), str(RUN_0_1 / "rows.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    got, want = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(RUN_0_1 / "predictions.csv")
    assert list(got.columns) == list(want.columns) and got["prediction"].tolist() == want["prediction"].tolist()
    # The same probabilities, but not the same bytes on every machine: the float32 network's last bit depends
    # on the CPU's vector instructions (AVX2 or AVX-512 kernels).
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), want.iloc[:, 1:].to_numpy(), rtol=1e-6, atol=0)


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
    ("embed_rows", 2.5, "preprocess.embed_rows must be a positive integer or null"),
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


def test_category_embeddings_start_within_one_over_the_square_root_of_their_width():
    torch.manual_seed(0)
    inputs = FeatureInputs(InputLayout(2, numeric=(0,), codes=((1, 1000),)), ModelConfig(embedding_dim=4))
    weight = inputs.embeddings[0].weight.detach()
    assert float(weight.abs().max()) <= 0.5  # 4 ** -0.5; nn.Embedding's own N(0, 1) reaches 3 and more
    assert float(weight.std()) == pytest.approx(0.5 / 3 ** 0.5, rel=0.03)  # uniform on [-0.5, 0.5]


@pytest.mark.parametrize("periodic_max, periodic", [(3, True), (2, False), (None, True)])
def test_periodic_embeddings_only_up_to_periodic_max_numeric_columns(periodic_max, periodic):
    config = ModelConfig(numeric_embedding="periodic", embedding_dim=5, hidden=(4,), periodic_max=periodic_max)
    plain = build_model(InputLayout(3, numeric=(0, 1, 2)), 2, config)
    assert (plain.inputs is not None) == periodic
    assert plain.layers[0].in_features == (3 + 3 * 5 if periodic else 3)
    with_code = build_model(InputLayout(4, numeric=(0, 1, 2), codes=((3, 7),)), 2, config)
    assert (with_code.inputs.periodic is not None) == periodic
    assert with_code.layers[0].in_features == 3 + 5 + (3 * 5 if periodic else 0)


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
    # embed_rows off: 168 training rows over 30 cities (5.6 each) would keep the column one-hot.
    config = with_values(api.make_config(), dict(onehot_max=8, numeric_embedding="periodic", scaling="robust",
                                                 embedding_dim=4, hidden=(16,), epochs=3, patience=0, seed=5,
                                                 embed_rows=None))
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
