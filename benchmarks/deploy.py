"""Deployment figures for docs/deploy.md: the ONNX graph's agreement and latency, the HTTP server under load.

1. Each table of the quality benchmark (iris, wine, breast_cancer, digits and
   the mixed table) is trained briefly with the default network, exported to
   ONNX, and compared in onnxruntime with ``Predictor.predict_proba`` on its
   test rows, as given and with gaps and unseen categories.
2. Single-row latency of the mixed table's graph in onnxruntime (one thread),
   next to ``Predictor.predict_proba`` on one row.
3. ``torchclf serve`` on the same run, in a child process on 127.0.0.1:
   one-record requests at concurrency 8 over keep-alive connections (latency
   percentiles), then 10,000-row batch requests one at a time (rows/s); with
   the server's CPU time per request, which a busy machine inflates less than
   the wall clock. Both backends (onnxruntime and torch) unless ``--backends``.
   Before each server, where a 10,000-row request's time goes, step by step
   in this process (reading the body, predicting, writing the answer; CPU
   time), with orjson and with the standard library.

    OMP_NUM_THREADS=1 python -m benchmarks.deploy            # about a minute on 2 cores
    OMP_NUM_THREADS=1 python -m benchmarks.deploy --quick    # fewer tables and requests

Only public tools: onnxruntime, the standard library's http.client, threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.common import machine_info, table


def train_runs(names: list[str], folder: Path, epochs: int) -> dict[str, Path]:
    """A run folder per table, trained from a re-readable source so its test rows can be rebuilt."""
    import torchclf
    from benchmarks.quality import mixed_table
    from torchclf.api import make_config

    runs = {}
    for name in names:
        source = name
        if name == "mixed":
            source = str(folder / "mixed.csv")
            mixed_table().to_csv(source, index=False)
        config = make_config(train={"epochs": epochs, "patience": 0})
        torchclf.train(source, target="label" if name == "mixed" else None, config=config, out=folder / name)
        runs[name] = folder / name
    return runs


def agreement(runs: dict[str, Path], folder: Path) -> list[list]:
    import torchclf
    from torchclf import export
    from torchclf.explain import held_out_rows

    rows = []
    for name, run in runs.items():
        predictor = torchclf.load(run)
        path = export.export_onnx(predictor, folder / f"{name}.onnx")
        frame = held_out_rows(predictor)[0].features
        result = export.check_rows(predictor, path, frame)
        rows.append([name, predictor.task.kind, len(frame), result.rows, f"{result.max_difference:.1e}",
                     result.label_mismatches])
    return rows


def onnx_latency(run: Path, onnx_path: Path, calls: int) -> dict:
    import torchclf
    from torchclf import export
    from torchclf.explain import held_out_rows

    predictor = torchclf.load(run)
    frame = held_out_rows(predictor)[0].features
    sess = export.session(onnx_path, threads=1)
    feeds = [export.onnx_inputs(predictor, frame.iloc[[i % len(frame)]]) for i in range(calls)]
    rows = [frame.iloc[[i % len(frame)]] for i in range(calls)]
    for f in feeds[:50]:
        sess.run(None, f)
    onnx_times, torch_times = [], []
    for f in feeds:
        t0 = time.perf_counter()
        sess.run(None, f)
        onnx_times.append(time.perf_counter() - t0)
    for r in rows[:50]:
        predictor.predict_proba(r)
    for r in rows:
        t0 = time.perf_counter()
        predictor.predict_proba(r)
        torch_times.append(time.perf_counter() - t0)
    def ms(values, q):
        return float(np.percentile(values, q)) * 1e3

    return {"onnx_p50_ms": ms(onnx_times, 50), "onnx_p99_ms": ms(onnx_times, 99),
            "predictor_p50_ms": ms(torch_times, 50), "predictor_p99_ms": ms(torch_times, 99), "calls": calls}


def start_server(run: Path, backend: str) -> tuple[subprocess.Popen, str]:
    """``torchclf serve RUN --port 0`` in a child process; returns it and its address once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "torchclf", "serve", str(run), "--port", "0", "--backend", backend],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith("torchclf serve: "):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its output
            return proc, line.split()[2]
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_many(url: str, path: str, body: bytes, requests: int, concurrency: int) -> tuple[list[float], int, float]:
    """``requests`` POSTs of ``body`` over ``concurrency`` keep-alive connections; (latencies, errors, wall)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    headers = {"Content-Type": "application/json"}

    def worker(n: int) -> tuple[list[float], int]:
        conn, times, errors = HTTPConnection(host, port, timeout=60), [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - t0)
            errors += response.status != 200
        conn.close()
        return times, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(worker, shares))
    wall = time.perf_counter() - t0
    return [t for times, _ in results for t in times], sum(e for _, e in results), wall


def request_bodies(run: Path) -> tuple[bytes, bytes, bytes]:
    """One test row as records; 10,000 test rows (drawn with replacement) as columns and as records."""
    import pandas as pd

    import torchclf
    from torchclf.explain import held_out_rows

    predictor = torchclf.load(run)
    frame = held_out_rows(predictor)[0].features
    one = json.dumps({"records": json.loads(frame.iloc[[0]].to_json(orient="records"))}).encode()
    big = frame.sample(10_000, replace=True, random_state=0).reset_index(drop=True)
    lists = {str(c): [None if pd.isna(v) else v for v in big[c].tolist()] for c in big.columns}
    columns = json.dumps({"columns": lists}).encode()
    records = json.dumps({"records": [dict(zip(lists, row)) for row in zip(*lists.values())]}).encode()
    return one, columns, records


def batch_stages(run: Path, backend: str, repeats: int) -> dict:
    """Where a 10,000-row request's server time goes, in this process: median CPU ms of each step, with
    orjson and with the standard library (``serve`` takes orjson when it is installed)."""
    from torchclf import serve

    served = serve.load_models({"run": run}, backend)["run"]
    _, columns, records = request_bodies(run)

    def cpu_ms(step) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
        return round(float(np.median(times)) * 1e3, 2)

    out = {"backend": served.backend, "orjson": serve._orjson() is not None}
    for name, body in (("columns", columns), ("records", records)):
        out[f"{name}_read_ms"] = cpu_ms(lambda body=body: serve.read_columns(served, body))
        out[f"{name}_read_stdlib_ms"] = cpu_ms(lambda body=body: serve.request_columns(served, serve.parse_body(body)))
    table = serve.read_columns(served, columns)
    out["predict_ms"] = cpu_ms(lambda: served.predict(table))
    result = serve.answer(served, table)
    out["encode_ms"] = cpu_ms(lambda: serve.encode(result))
    out["encode_stdlib_ms"] = cpu_ms(lambda: json.dumps({**result, "probabilities": result["probabilities"].tolist()},
                                                        ensure_ascii=False, separators=(",", ":")).encode())
    return out


def server_load(run: Path, requests: int, batches: int, backend: str) -> dict:
    one, columns, records = request_bodies(run)
    proc, url = start_server(run, backend)
    try:
        out = {"load_average_1min_at_start": round(os.getloadavg()[0], 2)}
        post_many(url, "/predict", one, 200, 8)  # warm up
        cpu = cpu_seconds(proc.pid)
        latencies, errors, wall = post_many(url, "/predict", one, requests, 8)
        out |= {"requests": requests, "errors": errors, "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
               "p99_ms": float(np.percentile(latencies, 99)) * 1e3, "requests_per_s": requests / wall,
               "server_cpu_ms_per_request": (cpu_seconds(proc.pid) - cpu) / requests * 1e3,
               "batch_rows": 10_000, "batches": batches}
        for name, body in (("columns", columns), ("records", records)):
            post_many(url, "/predict", body, 1, 1)
            cpu = cpu_seconds(proc.pid)
            times, errors, wall = post_many(url, "/predict", body, batches, 1)
            used = cpu_seconds(proc.pid) - cpu
            out[f"{name}_rows_per_s"] = 10_000 * batches / wall
            out[f"{name}_rows_per_server_cpu_s"] = 10_000 * batches / used
            out[f"{name}_server_cpu_ms_per_batch"] = used / batches * 1e3
            out[f"{name}_batch_ms_median"] = float(np.median(times)) * 1e3
            out[f"{name}_body_mib"] = len(body) / 2**20
            out["errors"] += errors
        out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tables, fewer calls and requests")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--backends", default="onnx,torch", help="the server's backends to measure")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    names = ["iris", "mixed"] if args.quick else ["iris", "wine", "breast_cancer", "digits", "mixed"]
    calls, requests, batches = (1000, 2000, 5) if args.quick else (5000, 10000, 20)
    print(json.dumps(machine_info(1)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = train_runs(names, folder, args.epochs)
        print(table(["table", "task", "test rows", "rows checked", "largest difference", "label mismatches"],
                    agreement(runs, folder)))
        latency = onnx_latency(runs["mixed"], folder / "mixed.onnx", calls)
        print(json.dumps({"single_row": latency}))
        for backend in args.backends.split(","):
            print(json.dumps({f"stages ({backend})": batch_stages(runs["mixed"], backend, batches)}))
            print(json.dumps({f"server ({backend})": server_load(runs["mixed"], requests, batches, backend)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
