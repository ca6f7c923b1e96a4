"""config.py's parameter table: validation, round trips, and the command line derived from it."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import run_cli
from torchclf import config as cfg
from torchclf.config import PARAM, PARAMS, DataConfig, ModelConfig, RunConfig, TrainConfig
from torchclf.errors import TorchclfError

SECTION_CLASSES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _bad_values(p: cfg.Param) -> list:
    """Values a parameter must refuse: below/above its bounds, wrong types, unknown choices."""
    if p.kind == "sizes":
        return [(0,), (4, -1), "64,64", (1.5,), None]
    if p.kind == "names":
        return [3, ("",), ("a", 1), b"a", None]
    if p.kind == "bool":
        return [1, "yes", None]
    if p.kind == "str":
        return ["no-such-choice", 3] + ([] if p.none is not None else [None])
    bad = ["1", True] + ([] if p.none is not None else [None])
    if p.low is not None:
        bad.append(p.low if p.low_open else p.low - 1)
    if p.high is not None:
        bad.append(p.high if p.high_open else p.high + 1)
    if p.kind == "int":
        bad.append(2.5)
    else:
        bad.append(float("nan"))
    return bad


# Free-text parameters checked by their own rule: a valid non-default example each.
TEXT_EXAMPLES = {"threshold": "recall>=0.8"}


def _good_value(p: cfg.Param):
    """A valid value other than the default."""
    if p.name in TEXT_EXAMPLES:
        return TEXT_EXAMPLES[p.name]
    if p.kind == "sizes":
        return (7, 3)
    if p.kind == "names":
        return ("id", "notes")
    if p.kind == "bool":
        return not p.default
    if p.choices is not None:
        return next(c for c in p.choices if c != p.default)
    if p.default is None:
        return 3
    if p.name in ("test_size", "validation_size"):
        return 0.15 if p.default != 0.15 else 0.1
    if p.high is not None:
        return (p.default + p.high) / 2 if p.kind == "float" else p.default + 1
    return p.default * 3 + 1 if p.kind == "int" else p.default * 3 + 0.5


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_every_parameter_refuses_bad_values_naming_its_field(param):
    cls = SECTION_CLASSES[param.section]
    for value in _bad_values(param):
        with pytest.raises(TorchclfError) as info:
            cls(**{param.name: value})
        message = str(info.value)
        assert message.startswith(f"{cls.__name__}.{param.name}: got"), message
        assert param.expected(python=True).rsplit(", or '", 1)[0] in message


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_every_parameter_accepts_a_non_default_value_and_round_trips(param):
    value = _good_value(param)
    config = cfg.with_values(RunConfig(), {param.name: value})
    assert config.value(param.name) == value and value != param.default
    again = RunConfig.from_dict(config.to_dict())
    assert again == config
    # the text form the command line and shown commands use parses back to the same value
    assert param.parse(param.format(value)) == value


def test_defaults_come_from_the_table():
    assert RunConfig().values() == {p.name: p.default for p in PARAMS}
    for cls in SECTION_CLASSES.values():
        assert [f.name for f in dataclasses.fields(cls)] == [p.name for p in PARAMS if cls is SECTION_CLASSES[p.section]]


def test_the_split_sizes_are_checked_together():
    with pytest.raises(TorchclfError) as caught:
        DataConfig(test_size=0.5, validation_size=0.4)
    assert str(caught.value) == ("DataConfig.test_size 0.5 and DataConfig.validation_size 0.4 hold out 0.9 of the rows; "
                                 "together they must stay below 0.9, so that rows are left to train on")
    assert DataConfig(test_size=0.5, validation_size=0.39).validation_size == 0.39


def test_from_dict_takes_defaults_for_missing_fields_and_refuses_unknown_ones():
    old = RunConfig().to_dict()
    del old["train"]["compile"]  # a file from before the parameter existed
    assert RunConfig.from_dict(old) == RunConfig()
    old["train"]["warp_speed"] = 9
    with pytest.raises(TorchclfError, match=r"TrainConfig: unknown field\(s\) \['warp_speed'\]"):
        RunConfig.from_dict(old)
    with pytest.raises(TorchclfError, match=r"RunConfig: unknown field\(s\) \['extra'\]"):
        RunConfig.from_dict({"extra": 1})
    with pytest.raises(TorchclfError, match="RunConfig.task: got 'regression'"):
        RunConfig(task="regression")


def test_by_section_routes_names_and_refuses_unknown_ones():
    assert cfg.by_section({"lr": 0.5, "hidden": (3,), "max_categories": 9}) == {
        "model": {"hidden": (3,)}, "train": {"lr": 0.5}, "data": {"max_categories": 9}}
    with pytest.raises(TorchclfError, match="unknown parameter 'lrate'"):
        cfg.by_section({"lrate": 0.5})


def test_text_forms_of_words_that_mean_none():
    assert PARAM["batch_size"].parse("full") is None and PARAM["batch_size"].format(None) == "full"
    assert PARAM["threads"].parse("auto") is None and PARAM["threads"].parse("3") == 3
    assert PARAM["class_weight"].parse("none") is None
    assert PARAM["hidden"].parse("none") == () and PARAM["hidden"].format(()) == "none"
    with pytest.raises(TorchclfError, match="--batch-size: got 'many'"):
        PARAM["batch_size"].parse("many")


def test_train_help_lists_every_flag_with_the_table_default():
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    text = " ".join(out.split())  # help wraps lines
    for p in PARAMS:
        assert p.cli_flag.split("/")[0] in text, p.name
        assert " ".join(p.help_text().split()) in text, p.name


def test_every_flag_reaches_the_config_with_a_non_default_value():
    from torchclf.cli import build_config

    values = {p.name: _good_value(p) for p in PARAMS}
    settings = {name: PARAM[name].format(value) for name, value in values.items()}
    config = build_config(None, "auto", settings)
    assert config.values() == values
