"""Benchmark 6: peak resident memory when training on many rows (each contender in its own process)."""

from __future__ import annotations

import json

from benchmarks.common import run_python


def run(rows: int, features: int, log=print) -> dict:
    results = []
    for who in ("plain loop on a float32 tensor", "torchclf"):
        key = "torchclf" if who == "torchclf" else "plain"
        seconds, out = run_python(["-m", "benchmarks.memory_child", str(rows), str(features), key],
                                  env={"OMP_NUM_THREADS": "1"})
        facts = json.loads(out.strip().splitlines()[-1])
        facts.update(name=who, seconds=seconds,
                     extra_mb=facts["peak_mb"] - facts["rss_after_data_mb"])
        facts["extra_copies"] = facts["extra_mb"] / facts["data_mb"]
        results.append(facts)
        log(f"  [memory] {who}: data {facts['data_mb']:.0f} MB, peak {facts['peak_mb']:.0f} MB "
            f"(+{facts['extra_mb']:.0f} MB = {facts['extra_copies']:.2f} x the float64 data), {seconds:.1f}s")
    return {"rows": rows, "features": features, "results": results}
