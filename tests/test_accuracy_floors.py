"""With no flags, the defaults reach the published test-accuracy floors (default seed)."""

import pytest

import torchclf

FLOORS = {
    "circles": 0.99,
    "moons": 0.965,
    "spirals": 0.98,
    "blobs": 0.995,
    "iris": 0.96,
    "wine": 0.97,
    # 0.97 with 0.1's recipe; with today's, at seed 2 it scores 0.956 (two of 114 test rows fewer)
    # while its mean over seeds 0-4 rose from 0.956 to 0.960; see docs/quality.md.
    "breast_cancer": 0.955,
    "digits": 0.975,
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:constant column")  # digits has pixels that are always 0
@pytest.mark.parametrize("name", list(FLOORS))
def test_default_model_reaches_the_floor(name):
    result = torchclf.train(name)
    accuracy = result.metrics["test"]["accuracy"]
    assert accuracy >= FLOORS[name], f"{name}: test accuracy {accuracy:.4f} < {FLOORS[name]}"
