"""The engine's speed settings: thread policy, fused optimizers, precision, compile, and the benchmark suite.

Functional checks only: nothing here asserts a timing.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from conftest import run_cli
from torchclf import accel, engine
from torchclf.config import ModelConfig, TrainConfig
from torchclf.errors import TorchclfError
from torchclf.model import build_model
from torchclf.task import Task


def _blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    y = torch.arange(n) % 3
    X = centers[y] + torch.randn(n, 2, generator=g)
    return engine.TensorData(X, y)


def _config(**kw):
    base = dict(epochs=15, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0, schedule="none",
                patience=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def _accuracy(model, data):
    task = Task("multiclass", 3)
    return engine.evaluate(model, task, task.loss_function(), data)[1]


# ----- threads -------------------------------------------------------------------
def test_small_steps_get_one_thread_and_large_ones_one_per_8m_multiply_adds():
    tiny = build_model(2, 1, ModelConfig(hidden=(10, 10), dropout=0.0))
    wide = build_model(32, 4, ModelConfig(hidden=(256, 256), dropout=0.0))  # 74,752 weights
    assert accel.choose_threads(tiny, 800, available=8, requested=None) == 1
    assert accel.choose_threads(wide, 64, available=8, requested=None) == 1      # 4.8M multiply-adds a step
    assert accel.choose_threads(wide, 256, available=8, requested=None) == 2     # 19.1M
    assert accel.choose_threads(wide, 4096, available=8, requested=None) == 8    # 306M, capped at the cores
    assert accel.choose_threads(wide, 4096, available=8, requested=None, free=3.2) == 3


def test_a_thread_request_is_honoured_up_to_the_available_share():
    model = build_model(2, 1, ModelConfig(hidden=(4,), dropout=0.0))
    assert accel.choose_threads(model, 10, available=4, requested=3) == 3
    assert accel.choose_threads(model, 10, available=2, requested=16) == 2


@pytest.mark.parametrize("macs, available, requested, free, expected", [
    (40_000_000, 4, 3, 0.0, 3),          # a request is exact, whatever the load
    (40_000_000, 2, 16, 2.0, 2),         # ... capped at this process's cores
    (100_000, 8, None, 8.0, 1),          # small steps: one thread on an idle machine
    (15_999_999, 8, None, 8.0, 1),       # ... up to two threads' worth of work
    (80_000_000, 8, None, None, 8),      # free cores unknown: every available core
    (20_000_000, 8, None, 8.0, 2),       # at most one thread per 8M multiply-adds
    (40_000_000, 2, None, 1.6, 2),       # 1.6 cores free rounds to 2
    (40_000_000, 2, None, 1.4, 1),       # ... 1.4 to 1
    (40_000_000, 2, None, -2.5, 1),      # a busy machine (others want more than all cores): one thread
    (80_000_000, 16, None, 5.5, 6),      # 16 cores, 10.5 busy elsewhere: the free ones
])
def test_thread_decisions_from_given_facts(macs, available, requested, free, expected):
    n, reason = accel.decide_threads(macs, available, requested, free)
    assert n == expected
    assert reason  # every decision says why (it is saved in model.json)


def test_thread_reasons_name_the_deciding_fact():
    assert accel.decide_threads(40_000_000, 2, 16, None) == (2, "requested 16, capped at this process's 2 core(s)")
    assert accel.decide_threads(100_000, 8, None, None) == (1, "small steps (0.1M multiply-adds)")
    assert accel.decide_threads(40_000_000, 2, None, 0.3) == (1, "1 of 2 cores: other processes leave 0.3 free")
    assert accel.decide_threads(40_000_000, 2, None, 1.9) == (2, "2 of 2 cores")


def test_other_processes_use_is_the_machines_busy_time_less_this_process():
    # (seconds, busy ticks, all ticks, CPUs, own CPU seconds): over 2 s, 2 CPUs were 75% busy (3 cores' worth
    # of 4 in ticks, i.e. 1.5 cores), of which this process used 1 CPU-second a second.
    start, end = (10.0, 1000, 4000, 2, 5.0), (12.0, 1300, 4400, 2, 7.0)
    assert accel.others_busy_cores(start, end) == pytest.approx(0.5)
    assert accel.others_busy_cores(None, end) is None
    assert accel.others_busy_cores(start, start) is None


def test_free_cores_take_the_busier_of_now_and_the_load_average(monkeypatch):
    # Over the last 0.5 s: 1.8 cores busy, 0.8 of them this process's.
    monkeypatch.setattr(accel, "_LAST_SAMPLE", [(20.0, 0, 0, 2, 0.0)])
    monkeypatch.setattr(accel, "_cpu_sample", lambda: (20.5, 90, 100, 2, 0.4))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(accel.os, "getloadavg", lambda: (2.5, 0.0, 0.0), raising=False)
    assert accel.free_cores(2) == pytest.approx(1.0)  # others use 1.0 now; load 2.5 less our 2 threads: 0.5
    monkeypatch.setattr(accel, "_LAST_SAMPLE", [(20.0, 0, 0, 2, 0.0)])
    monkeypatch.setattr(accel.os, "getloadavg", lambda: (6.0, 0.0, 0.0), raising=False)
    assert accel.free_cores(2) == pytest.approx(-2.0)  # others have been asking for 4 cores


def test_fit_on_a_busy_machine_trains_with_one_thread_and_says_why(monkeypatch):
    data = _blobs()
    wide = build_model(2, 3, ModelConfig(hidden=(256, 256), dropout=0.0))
    monkeypatch.setattr(accel, "available_threads", lambda: 2)
    monkeypatch.setattr(accel, "free_cores", lambda cores=None: 0.4)
    seen = []
    monkeypatch.setattr(accel, "cpu_settings", lambda n: (seen.append(n), accel.threads(None))[1])
    engine.fit(wide, Task("multiclass", 3), data, None, _config(epochs=1, batch_size=None))  # 240 rows: 16M
    assert seen == [1]
    assert accel.last_thread_choice() == {"threads": 1, "reason": "1 of 2 cores: other processes leave 0.4 free"}
    monkeypatch.setattr(accel, "free_cores", lambda cores=None: 2.0)
    engine.fit(wide, Task("multiclass", 3), data, None, _config(epochs=1, batch_size=None))
    assert seen == [1, 2] and accel.last_thread_choice()["threads"] == 2


def test_available_threads_divides_the_cores_between_torchrun_processes(monkeypatch):
    monkeypatch.setattr(accel, "available_cores", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert accel.available_threads() == 8
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert accel.available_threads() == 2


def test_cpu_settings_apply_inside_and_are_restored_after():
    denormal = torch.tensor([1e-39])
    before = torch.get_num_threads()
    with accel.cpu_settings(before + 1):
        assert torch.get_num_threads() == before + 1
        assert float(denormal * 1.0) == 0.0  # flushed to zero
    assert torch.get_num_threads() == before
    assert float(denormal * 1.0) > 0.0


def test_fit_leaves_the_process_settings_as_it_found_them():
    data = _blobs()
    before = torch.get_num_threads()
    engine.fit(build_model(2, 3, ModelConfig(hidden=(16,), dropout=0.0)), Task("multiclass", 3), data, None,
               _config(epochs=2, threads=before + 1))
    assert torch.get_num_threads() == before
    assert float(torch.tensor([1e-39]) * 1.0) > 0.0


# ----- optimizers ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_are_fused_where_torch_supports_it(name):
    model = build_model(2, 3, ModelConfig(hidden=(8,), dropout=0.0))
    optimizer = engine.make_optimizer(model, _config(optimizer=name))
    assert optimizer.defaults.get("fused") is True


def test_an_optimizer_without_a_fused_version_falls_back_to_foreach():
    class NoFused(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused=True is not supported here")
            super().__init__(params, **kw)

    optimizer = accel.make_optimizer(NoFused, nn.Linear(2, 2).parameters(), lr=0.1)
    assert optimizer.defaults["foreach"] is True


# ----- precision -----------------------------------------------------------------
def test_precision_is_validated_with_the_field_named():
    with pytest.raises(TorchclfError, match="precision"):
        TrainConfig(precision="fp8")


def test_float16_needs_a_cuda_gpu():
    data = _blobs()
    with pytest.raises(TorchclfError, match="float16.*CUDA"):
        engine.fit(build_model(2, 3, ModelConfig(hidden=(8,), dropout=0.0)), Task("multiclass", 3), data, None,
                   _config(precision="float16"))


def test_bfloat16_runs_the_forward_pass_in_bfloat16_and_learns_as_well():
    data = _blobs()
    results = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = build_model(2, 3, ModelConfig(hidden=(16,), dropout=0.0))
        seen = []
        hook = model.layers[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # this CPU may emulate bfloat16
            state = engine.fit(model, Task("multiclass", 3), data, None, _config(precision=precision))
        hook.remove()
        assert seen[0] == (torch.bfloat16 if precision == "bfloat16" else torch.float32)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
        assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
        results[precision] = _accuracy(model, data)
    assert results["float32"] > 0.9
    assert abs(results["bfloat16"] - results["float32"]) <= 0.05


# ----- compile -------------------------------------------------------------------
def test_compile_trains_the_original_module_through_the_compiled_one(monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kw):  # the eager backend traces without building C++ (seconds, not minutes)
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    data = _blobs()
    model = build_model(2, 3, ModelConfig(hidden=(16,), dropout=0.0))
    before = [p.detach().clone() for p in model.parameters()]
    state = engine.fit(model, Task("multiclass", 3), data, None, _config(epochs=3, compile=True))
    torch._dynamo.reset()
    assert compiled == [model]
    assert state.model is model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert _accuracy(model, data) > 0.8


def test_compile_without_a_compiler_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    with pytest.raises(TorchclfError, match="C\\+\\+ compiler"):
        accel.maybe_compile(nn.Linear(2, 2), True, torch.device("cpu"))
    plain = nn.Linear(2, 2)
    assert accel.maybe_compile(plain, False, torch.device("cpu")) is plain


# ----- command line --------------------------------------------------------------
def test_cli_flags_reach_the_saved_configuration(tmp_path, monkeypatch, no_pictures):
    # Both non-default: --compile must reach the engine, not only the saved configuration.
    compiled = []
    monkeypatch.setattr(accel.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)  # no real build
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run_cli("train", "blobs", "--epochs", "2", "--precision", "bfloat16", "--compile",
                               "--device", "cpu", "--quiet", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["config"]["train"]["precision"] == "bfloat16"
    assert manifest["config"]["train"]["compile"] is True
    assert len(compiled) == 1 and isinstance(compiled[0], nn.Module)


def test_cli_float16_on_cpu_is_a_one_line_error(tmp_path):
    code, _, err = run_cli("train", "blobs", "--epochs", "1", "--device", "cpu", "--precision", "float16",
                           "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith("error:") and "CUDA" in err and len(err.strip().splitlines()) == 1


# ----- the benchmark suite -------------------------------------------------------
def test_the_benchmark_suite_runs_in_quick_mode(monkeypatch, tmp_path):
    from benchmarks import run as bench

    sizes = {**bench.SIZES["quick"], "train_rows": 1200, "tiny_epochs": 4}
    monkeypatch.setitem(bench.SIZES, "quick", sizes)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave this test process as it is
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nmore prose\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bench.main(["--quick", "--only", "training,tiny", "--json", str(tmp_path / "r.json"),
                          "--write-docs", "--docs", str(doc)])
    names = [r["name"] for r in res["training"]["results"]]
    assert "torchclf engine" in names and "plain DataLoader loop" in names
    for r in res["training"]["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["samples_per_s_cpu"] > 0
    assert len(res["tiny"]["results"]) == 4
    text = doc.read_text()
    assert "prose" in text and "more prose" in text and "old" not in text
    assert "### 1. Training throughput" in text and "### Targets" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
    assert json.loads((tmp_path / "r.json").read_text())["mode"] == "quick"
