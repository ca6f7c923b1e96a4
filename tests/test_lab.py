"""`torchclf compare`: the tutorial's improvement study, custom variants, and their pictures."""

from __future__ import annotations

import csv

import matplotlib.image as mpimg
import pytest

from conftest import count_axes, run_cli
from torchclf import api, lab


def _not_blank(path, min_w=400, min_h=200):
    img = mpimg.imread(path)
    assert img.shape[1] >= min_w and img.shape[0] >= min_h, img.shape
    assert img[..., :3].std() > 0.03, f"{path.name} is blank"
    return img


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tutorial's study, as `torchclf compare circles` runs it (seeded, no per-variant folders)."""
    mp = pytest.MonkeyPatch()
    seen = count_axes(mp)
    out = tmp_path_factory.mktemp("lab") / "study"
    try:
        code, stdout, stderr = run_cli("compare", "circles", "--out", str(out), "--no-runs", "-q")
    finally:
        mp.undo()
    return code, stdout, stderr, out, seen


@pytest.mark.slow
def test_compare_circles_reproduces_the_tutorials_story(study):
    code, stdout, stderr, out, _ = study
    assert code == 0, stderr
    rows = _rows(out / "metrics.csv")
    assert [r["variant"] for r in rows] == ["circle-v0", "circle-v1", "circle-v2", "default"]
    acc = {r["variant"]: float(r["test_accuracy"]) for r in rows}
    # Straight lines cannot separate circles: both linear presets stay near a coin toss.
    assert 0.40 <= acc["circle-v0"] <= 0.60 and 0.40 <= acc["circle-v1"] <= 0.60
    # ReLU bends the boundary: clearly above the linear models.
    assert acc["circle-v2"] >= max(acc["circle-v0"], acc["circle-v1"]) + 0.2
    assert acc["default"] >= 0.99
    # The presets' shapes and the tutorial's epochs.
    shape = {r["variant"]: (r["hidden"], r["activation"], int(r["epochs"])) for r in rows}
    assert shape["circle-v0"] == ("5", "linear", 100)
    assert shape["circle-v1"] == ("10,10", "linear", 1000) and shape["circle-v2"] == ("10,10", "relu", 1000)
    for name in acc:
        assert name in stdout
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_compare_pictures_have_one_panel_per_variant(study):
    _, _, _, out, seen = study
    assert seen["learning_curves.png"] == 2  # loss and accuracy, every variant overlaid
    assert seen["decision_boundaries.png"] == 4  # one boundary per variant
    img = _not_blank(out / "decision_boundaries.png", 1000, 250)
    assert img.shape[1] > 3 * img.shape[0]  # four panels in a row
    _not_blank(out / "learning_curves.png")


def test_custom_variants_beyond_two_features_with_runs(tmp_path, monkeypatch, no_pictures_here):
    seen = count_axes(monkeypatch)
    toml = tmp_path / "variants.toml"
    toml.write_text('[variants]\nwide = "--hidden 32 --epochs 30"\ntanh = "--hidden 8,8 --activation tanh --epochs 30"\n')
    out = tmp_path / "cmp"
    code, stdout, stderr = run_cli(
        "compare", "iris", "--variant", "linear:--hidden none --epochs 30 --lr 0.05", "--file", str(toml),
        "--features", "petal length (cm),petal width (cm)", "--resolution", "40", "--out", str(out), "-q")
    assert code == 0, stderr
    rows = _rows(out / "metrics.csv")
    assert [r["variant"] for r in rows] == ["linear", "wide", "tanh"]
    assert [r["hidden"] for r in rows] == ["none", "32", "8,8"] and rows[2]["activation"] == "tanh"
    assert float(rows[0]["lr"]) == 0.05 and all(int(r["epochs"]) <= 30 for r in rows)
    assert seen["decision_boundaries.png"] == 3
    _not_blank(out / "decision_boundaries.png", 700, 200)
    for name in ("linear", "wide", "tanh"):
        assert (out / "runs" / name / "model.json").is_file()
        assert (out / "runs" / name / "model.safetensors").is_file()


def test_a_warning_about_the_rows_is_given_once_not_per_variant():
    """Every variant trains on the same rows, so what they hold (an identifier column) is said once; the
    user's own filters still apply."""
    import warnings

    import numpy as np
    import pandas as pd

    from torchclf.data.sources import DataWarning

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "order_id": rng.permutation(120) + 5000})
    frame["y"] = np.where(frame["x"] > 0, "a", "b")
    variants = [lab.Variant(name, api.make_config(model={"hidden": (h,)}, train={"epochs": 2, "threads": 1}), "")
                for name, h in (("one", 4), ("two", 8), ("three", 2))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lab.compare(frame, variants, target="y")
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(said) == 1 and said[0].startswith("column 'order_id': "), said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DataWarning)
        lab.compare(frame, variants, target="y")
    assert not [w for w in caught if issubclass(w.category, DataWarning)]


def test_loss_maps_to_task_and_every_improvement_is_a_flag(tmp_path):
    from torchclf.cli import variant_config
    from torchclf.config import PARAM

    default = variant_config("default", [], {})
    for way, flags, _ in lab.IMPROVEMENTS:
        words = flags.split()
        config = variant_config(way.replace(" ", "-"), words, {})
        if words[0] == "--task":
            assert config.task == words[1] and config.values() == default.values(), way
            continue
        name = next(p.name for p in PARAM.values() if p.cli_flag == words[0])
        assert config.value(name) == PARAM[name].parse(words[1]), way
        others = {k: v for k, v in config.values().items() if k != name}
        assert others == {k: v for k, v in default.values().items() if k != name}, way
    # Changing the loss on a binary problem: softmax + cross-entropy over two outputs instead of one sigmoid logit.
    out = tmp_path / "loss"
    plain = "--hidden 8 --epochs 15 --numeric-embedding none"  # the tutorial's network: inputs straight in
    code, _, stderr = run_cli("compare", "moons:n_samples=300", "--variant", f"bce:{plain}",
                              "--variant", f"ce:{plain} --task multiclass", "--out", str(out), "--no-runs", "-q")
    assert code == 0, stderr
    rows = {r["variant"]: r for r in _rows(out / "metrics.csv")}
    assert int(rows["bce"]["parameters"]) == 2 * 8 + 8 + 8 + 1
    assert int(rows["ce"]["parameters"]) == 2 * 8 + 8 + 2 * 8 + 2
    assert rows["ce"]["test_roc_auc"] not in ("", None)


def test_variant_parsing():
    assert lab.parse_variant("deeper:--hidden 64,64,64 --epochs 200") == (
        "deeper", ["--hidden", "64,64,64", "--epochs", "200"])
    assert lab.parse_variant("plain:") == ("plain", [])
    with pytest.raises(ValueError, match="NAME:FLAGS"):
        lab.parse_variant("--hidden 5")
    with pytest.raises(ValueError, match="variant name"):
        lab.parse_variant("two words:--hidden 5")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "a:--seed 3"], "--seed is set once for the whole comparison"),
        (["--variant", "a:--out x"], "--out is set once"),
        (["--variant", "a:--hiden 3"], "No such option: --hiden"),
        (["--variant", "a:--hidden 3", "--variant", "a:--hidden 4"], "must be unique"),
        (["--variant", "a:--hidden x"], "--hidden"),
        (["--variant", "a:--lr -1"], "error: variant 'a': --lr: got -1.0, expected a number > 0\n"),
        (["--file", "missing.toml"], "no such variants file"),
        (["--variant", "a:--hidden 3", "--features", "x0"], "two column names"),
    ],
)
def test_compare_errors_are_one_line(tmp_path, args, message):
    code, _, stderr = run_cli("compare", "circles:n_samples=100", "--out", str(tmp_path / "o"), *args)
    assert code == 2, stderr
    assert message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_variants_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[variants\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        lab.read_variants_file(bad)
    bad.write_text("[variants]\nx = 3\n")
    with pytest.raises(ValueError, match="string of flags"):
        lab.read_variants_file(bad)
    bad.write_text("[other]\nx = '--hidden 3'\n")
    with pytest.raises(ValueError, match=r"\[variants\] table"):
        lab.read_variants_file(bad)


def test_a_variant_honours_every_training_flag():
    """Every table parameter a variant may set reaches its RunConfig (non-default values throughout)."""
    from test_config import _good_value
    from torchclf.cli import variant_config
    from torchclf.config import PARAMS

    own = {p.name: _good_value(p) for p in PARAMS if not p.shared}
    words = []
    for p in PARAMS:
        if p.shared:
            continue
        if p.kind == "bool":
            words.append(p.cli_flag.split("/")[0 if own[p.name] else 1])
        else:
            words += [p.cli_flag, p.format(own[p.name])]
    shared = {"seed": 11, "test_size": 0.25, "validation_size": 0.15}
    config = variant_config("everything", words, shared)
    assert config.values() == {**own, **shared}


def test_a_variant_may_not_set_what_the_comparison_shares():
    from torchclf.cli import variant_config
    from torchclf.config import PARAMS
    from torchclf.errors import TorchclfError

    for p in PARAMS:
        if p.shared:
            with pytest.raises(TorchclfError, match=f"{p.cli_flag} is set once for the whole comparison"):
                variant_config("x", [p.cli_flag, "0.3" if p.kind == "float" else "5"], {})


def test_compare_trains_each_variant_with_its_speed_flags(tmp_path, no_pictures):
    """`compare -V "x:--precision bfloat16"` used to train in float32: the saved run records what trained."""
    import json

    out = tmp_path / "speed"
    code, _, stderr = run_cli("compare", "moons:n_samples=200", "-V", "bf16:--precision bfloat16 --epochs 2 --hidden 4",
                              "-V", "f32:--epochs 3 --hidden 4 --threads 1 --calibration none", "--out", str(out), "-q")
    assert code == 0, stderr
    trained = {name: json.loads((out / "runs" / name / "model.json").read_text())["config"]["train"]
               for name in ("bf16", "f32")}
    assert (trained["bf16"]["precision"], trained["bf16"]["epochs"]) == ("bfloat16", 2)
    assert (trained["f32"]["precision"], trained["f32"]["threads"], trained["f32"]["calibration"]) == ("float32", 1, None)
