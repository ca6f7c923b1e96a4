#!/usr/bin/env bash
# One short GPU session for the speed work: the CUDA-graph tests, the graph benchmark
# (benchmarks/gpu_graphs.py) and the command line on 800k rows (time outside the epochs, and where it goes).
# Usage, from the repository root on a machine with a CUDA GPU and PyTorch: bash benchmarks/gpu_speed.sh
# Writes its logs to ${OUT:-/tmp/gpu-speed}.
set -u
OUT=${OUT:-/tmp/gpu-speed}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Byte-code caches somewhere writable: on a machine whose site-packages are read-only every import would
# compile again, seconds that a user's installation does not pay.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
unset PYTHONDONTWRITEBYTECODE
# CLI_ONLY=1 skips the tests and the graph benchmark.
CLI_ONLY=${CLI_ONLY:-0}
PY=${PYTHON:-python3}
WL=/tmp/gpu-speed-800k.parquet
{
nvidia-smi -L
$PY -c "import time, torch; t = time.perf_counter(); torch.empty(1, device='cuda'); print('torch', torch.__version__, torch.cuda.get_device_name(0), f'CUDA context in {time.perf_counter() - t:.2f} s')"
env | grep '^PYTHON' | sort
if [ "$CLI_ONLY" != 1 ]; then
echo "== tests (CUDA cases run, nothing skipped for want of a GPU)"
timeout 150 $PY -m pytest -q -o addopts="" -p no:cacheprovider tests/test_graphs.py tests/test_engine.py -x -rs 2>&1 | tail -15
echo "== graph benchmark"
timeout 240 $PY benchmarks/gpu_graphs.py --results "$OUT/gpu_graphs.json"
fi
echo "== command line, 800k rows x 32, 5 epochs, batch 4096"
$PY - <<'PYEOF'
from sklearn.datasets import make_classification
import pandas as pd
X, y = make_classification(n_samples=800_000, n_features=32, n_informative=16, n_classes=4, random_state=0)
frame = pd.DataFrame(X.astype("float32"), columns=[f"x{i}" for i in range(32)]); frame["label"] = y
frame.to_parquet("/tmp/gpu-speed-800k.parquet")
PYEOF
FLAGS="--target label --epochs 5 --batch-size 4096 --patience 0 --device cuda --quiet"
for i in 1 2 3; do  # run 1 also fills the byte-code cache
  rm -rf "$OUT/cli$i"
  s=$(date +%s.%N); timeout 120 $PY -m torchclf train $WL $FLAGS --out "$OUT/cli$i" > "$OUT/cli$i.log" 2>&1; e=$(date +%s.%N)
  $PY -c "import csv,sys; rows=list(csv.DictReader(open('$OUT/cli$i/history.csv'))); t=sum(float(r['seconds']) for r in rows); w=$e-$s; print(f'cli run $i: wall {w:.2f} s, epochs {t:.2f} s, outside the epochs {w-t:.2f} s')"
done
echo "== imports of one run (python -X importtime, the largest cumulative, microseconds)"
timeout 120 $PY -X importtime -m torchclf train $WL $FLAGS --out "$OUT/cli_imports" 2> "$OUT/importtime.txt" > /dev/null
sort -t'|' -k2 -n -r "$OUT/importtime.txt" | head -12
echo "== where the time outside the epochs goes (cProfile, cumulative)"
timeout 120 $PY - "$WL" "$OUT" <<'PYEOF'
import cProfile, pstats, sys, io
wl, out = sys.argv[1], sys.argv[2]
from torchclf import cli
sys.argv = ["torchclf", "train", wl, "--target", "label", "--epochs", "5", "--batch-size", "4096", "--patience", "0",
            "--device", "cuda", "--quiet", "--out", out + "/cliprof"]
profile = cProfile.Profile(); profile.enable()
try:
    cli.main()
finally:
    profile.disable()
    text = io.StringIO(); stats = pstats.Stats(profile, stream=text).sort_stats("cumulative")
    stats.print_stats(120); stats.print_stats("torchclf/", 60)
    open(out + "/cli_profile.txt", "w").write(text.getvalue())
    print("\n".join(line[:150] for line in text.getvalue().splitlines()[-62:]))
PYEOF
echo "== digits, defaults, --device cuda"
/usr/bin/time -f "wall %e s" timeout 120 $PY -m torchclf train digits --device cuda --out "$OUT/digits" --quiet 2>&1 | tail -3
} 2>&1 | tee "$OUT/log.txt"
