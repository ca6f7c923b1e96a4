"""Benchmark 7: the engine's precision and compile flags, speed and accuracy, on the best device here.

The workload of benchmark 1 (MLP 32->256->256->4, Adam, batch 256), trained by
``engine.fit`` with each setting from the same seed; accuracy is measured on
held-out rows so that a faster setting can be seen not to cost a worse model.
On a GPU the data sits in GPU memory and a larger batch is also shown.
"""

from __future__ import annotations

import warnings

from benchmarks.common import clock, median


def run(rows: int, epochs: int, repeats: int, include_compile: bool, log=print) -> dict:
    import torch

    from benchmarks.training import make_data
    from torchclf import engine
    from torchclf.accel import _cpu_has_native_bfloat16
    from torchclf.config import ModelConfig, TrainConfig
    from torchclf.model import build_model
    from torchclf.task import Task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    X, y = make_data(rows + rows // 4, seed=1)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    train, held = engine.TensorData(Xt[:rows], yt[:rows]), engine.TensorData(Xt[rows:], yt[rows:])
    settings = [("float32", 256, False)]
    if device.type == "cuda":
        settings += [("bfloat16", 256, False), ("float16", 256, False), ("float32", 4096, False),
                     ("bfloat16", 4096, False)]
    elif _cpu_has_native_bfloat16():
        settings += [("bfloat16", 256, False)]
    if include_compile:
        settings += [("float32", 256, True)]
    task = Task("multiclass", 4)
    out = []
    for precision, batch, compiled in settings:
        seconds, accs = [], []
        for _ in range(repeats + 1):  # the first round pays one-time costs and is not counted
            torch.manual_seed(0)
            model = build_model(32, 4, ModelConfig(hidden=(256, 256), dropout=0.0)).to(device)
            config = TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                 schedule="none", patience=0, device=device.type, precision=precision,
                                 compile=compiled)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with clock() as c:
                    engine.fit(model, task, train, None, config)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
            seconds.append(c.wall)
            accs.append(engine.evaluate(model, task, task.loss_function(), held)[1])
        row = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "precision": precision, "batch_size": batch, "compile": compiled,
               "samples_per_s": rows * epochs / median(seconds[1:]), "held_out_accuracy": median(accs[1:]),
               "first_round_seconds": seconds[0]}
        out.append(row)
        log(f"  [precision] {row['device']} {precision} batch {batch} compile={compiled}: "
            f"{row['samples_per_s']:,.0f} samples/s, held-out accuracy {row['held_out_accuracy']:.4f}")
    return {"rows": rows, "epochs": epochs, "repeats": repeats, "results": out}
