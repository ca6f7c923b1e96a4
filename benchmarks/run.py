"""Run torchclf's benchmark suite and report medians.

    python -m benchmarks.run --quick                 # tiny sizes: proves the suite runs (about a minute)
    python -m benchmarks.run --full --write-docs     # the real sizes; rewrites docs/benchmarks.md's results

Every comparison runs in one process (memory: one child process per
contender), on the same data and epochs, with the rounds interleaved and the
median reported. Wall-clock and process CPU time are both given: on a shared
machine the CPU time is the steadier of the two. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("training", "tiny", "target", "predict", "startup", "memory", "precision")

# Sizes per mode: quick proves every benchmark runs; full is what the docs report.
SIZES = {
    "quick": {"train_rows": 4_000, "train_epochs": 1, "train_repeats": 1, "tiny_epochs": 30, "tiny_repeats": 1,
              "target_repeats": 1, "target_max_epochs": 3, "predict_rows": 20_000, "predict_repeats": 1,
              "single_calls": 20, "help_repeats": 1, "train_cmd_repeats": 1,
              "train_cmd_args": ["--epochs", "2", "--quiet"], "memory_rows": 20_000, "memory_features": 64,
              "precision_rows": 4_000, "precision_epochs": 1, "precision_repeats": 1},
    "full": {"train_rows": 200_000, "train_epochs": 2, "train_repeats": 3, "tiny_epochs": 1000, "tiny_repeats": 5,
             "target_repeats": 3, "target_max_epochs": None, "predict_rows": 1_000_000, "predict_repeats": 3,
             "single_calls": 300, "help_repeats": 5, "train_cmd_repeats": 3, "train_cmd_args": [],
             "memory_rows": 2_000_000, "memory_features": 64,
             "precision_rows": 200_000, "precision_epochs": 3, "precision_repeats": 2},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    mode.add_argument("--full", action="store_true", help="the documented sizes (default)")
    p.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads for in-process benchmarks")
    p.add_argument("--compile", action="store_true", help="add a torchclf compile=True row to benchmark 1")
    p.add_argument("--bf16", action="store_true",
                   help="add a precision=bfloat16 row to benchmark 1 (added anyway where the CPU has native bf16)")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument("--write-docs", action="store_true", help="rewrite the results block of docs/benchmarks.md")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SUITES)
    if unknown:
        p.error(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(SUITES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    # Before numpy or torch load, so that every thread pool starts at this size.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(ROOT))

    from benchmarks import common, report

    common.set_threads(args.threads)
    size = SIZES[args.mode]
    info = common.machine_info(args.threads)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    res: dict = {"machine": info, "mode": args.mode}

    def log(msg: str) -> None:
        print(msg, flush=True)

    if "training" in args.only:
        from benchmarks import training

        print("1. training throughput", flush=True)
        res["training"] = training.run(size["train_rows"], size["train_epochs"], size["train_repeats"],
                                       include_compile=args.compile,
                                       include_bf16=args.bf16 or info["native_bfloat16"], log=log)
    if "tiny" in args.only:
        from benchmarks import tiny

        print("2. the tutorial's tiny workload", flush=True)
        res["tiny"] = tiny.run(size["tiny_epochs"], size["tiny_repeats"], log=log)
    if "target" in args.only:
        from benchmarks import target

        print("3. time to target accuracy", flush=True)
        res["target"] = target.run(size["target_repeats"], size["target_max_epochs"], log=log)
    if "predict" in args.only:
        from benchmarks import predict

        print("4. prediction", flush=True)
        res["predict"] = predict.run(size["predict_rows"], size["predict_repeats"], size["single_calls"], log=log)
    if "startup" in args.only:
        from benchmarks import startup

        print("5. command start-up", flush=True)
        res["startup"] = startup.run(size["help_repeats"], size["train_cmd_repeats"], size["train_cmd_args"], log=log)
    if "memory" in args.only:
        from benchmarks import memory

        print("6. peak memory", flush=True)
        res["memory"] = memory.run(size["memory_rows"], size["memory_features"], log=log)

    if "precision" in args.only:
        from benchmarks import precision

        print("7. precision and compile flags", flush=True)
        res["precision"] = precision.run(size["precision_rows"], size["precision_epochs"], size["precision_repeats"],
                                         include_compile=args.compile, log=log)

    mode_flag = f"--{args.mode}" + (f" --threads {args.threads}" if args.threads != 1 else "")
    plot_name = None
    if args.write_docs:
        png = args.docs.with_name("benchmarks.png")
        plot_name = png.name if report.plot(res, png) else None
    text = report.markdown(res, mode_flag, plot_name)
    print("\n" + text)
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.partial")
        tmp.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
        tmp.replace(args.json)
    if args.write_docs:
        report.write_docs(args.docs, text)
        print(f"wrote {args.docs}")
    return res


if __name__ == "__main__":
    main()
