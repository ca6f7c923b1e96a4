"""The tutorial's exercises, each one command with the built-in generators' options, at their published targets."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, floor, rows",
    [
        # Exercise: make_moons with noise 0.07 (1000 samples, seed 42); target above 96% test accuracy.
        ("moons:noise=0.07", 0.96, 1000),
        # Exercise: the CS231n spiral, 3 classes of 100 points; target above 95% test accuracy.
        ("spirals:points_per_class=100", 0.95, 300),
    ],
)
def test_exercise_reaches_its_target_in_one_command(tmp_path, spec, floor, rows, no_pictures_here):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("train", spec, "--out", str(out), "--quiet")
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > floor, metrics["test"]
    manifest = json.loads((out / "model.json").read_text())
    data = manifest["extra"]["data"]
    assert data["name"] == spec and data["rows"] == rows  # the spec's options were applied
