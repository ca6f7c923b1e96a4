"""Benchmark 4: prediction through the Python API, preprocessing included.

A 32->256->256->4 model is trained briefly and saved; ``torchclf.load(run)``
then predicts probabilities for a DataFrame of raw rows (throughput), and for
one row at a time (latency). The bare network on a ready tensor, fed in
65,536-row chunks, is the reference; the engine's own prediction uses
cache-sized chunks (1,024 rows on a CPU), which is why it can beat it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import Series, clock, median


def run(rows: int, repeats: int, single_calls: int, log=print) -> dict:
    import pandas as pd
    import torch

    import torchclf
    from benchmarks.training import make_data
    from torchclf.api import make_config

    X, y = make_data(max(rows, 20_000))
    frame = pd.DataFrame(X[:rows], columns=[f"x{i}" for i in range(32)])
    config = make_config(model={"hidden": (256, 256), "dropout": 0.0},
                         train={"epochs": 1, "batch_size": 256, "patience": 0})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchclf.train(X[:20_000], y[:20_000], config=config, out=Path(tmp) / "run")
        predictor = torchclf.load(Path(tmp) / "run")
    bulk, bare = Series("predict_proba"), Series("bare network")
    tensor = torch.from_numpy(X[:rows])
    model = predictor.model.eval()
    for r in range(repeats):
        with clock() as c:
            proba = predictor.predict_proba(frame)
        bulk.add(c)
        with clock() as c, torch.inference_mode():
            torch.cat([model(chunk) for chunk in torch.split(tensor, 65536)]).softmax(1)
        bare.add(c)
        log(f"  [predict {r + 1}/{repeats}] {rows / bulk.wall[-1]:,.0f} rows/s through predict_proba, "
            f"{rows / bare.wall[-1]:,.0f} rows/s bare network")
    assert proba.shape == (rows, 4)
    latencies = []
    one_rows = [frame.iloc[[i]] for i in range(min(single_calls, rows))]
    predictor.predict_proba(one_rows[0])  # the first call pays one-time set-up
    for row in one_rows:
        t0 = time.perf_counter()
        predictor.predict_proba(row)
        latencies.append(time.perf_counter() - t0)
    log(f"  [predict] single row: median {median(latencies) * 1e3:.2f} ms, "
        f"p95 {np.percentile(latencies, 95) * 1e3:.2f} ms")
    return {"rows": rows, "repeats": repeats,
            "predict_proba_rows_per_s_wall": rows / bulk.wall_median,
            "predict_proba_rows_per_s_cpu": rows / bulk.cpu_median,
            "bare_rows_per_s_wall": rows / bare.wall_median,
            "bare_rows_per_s_cpu": rows / bare.cpu_median,
            "single_row_ms_median": median(latencies) * 1e3,
            "single_row_ms_p95": float(np.percentile(latencies, 95)) * 1e3,
            "single_calls": len(latencies)}
