#!/usr/bin/env bash
# One short GPU session: the CLI on CUDA, and one process against a 1-GPU torchrun (NCCL)
# on the training-throughput workload. Writes what it measured to ${OUT:-/tmp/gpu-check}.
# Usage (on a machine with a CUDA GPU and PyTorch installed): bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=4
PY=${PYTHON:-python3}
{
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
$PY - <<'PYEOF'
from sklearn.datasets import make_classification
import pandas as pd
X, y = make_classification(n_samples=200_000, n_features=32, n_informative=16, n_classes=4, random_state=0)
frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(32)]); frame["label"] = y
frame.to_parquet("/tmp/wl.parquet", row_group_size=25_000)
PYEOF
FLAGS="--target label --hidden 256,256 --dropout 0 --batch-size 256 --optimizer adam --epochs 3 --patience 0 --device cuda --quiet"
echo "== digits, defaults, --device cuda"
/usr/bin/time -f "wall %e s" timeout 120 $PY -m torchclf train digits --device cuda --out "$OUT/digits" --quiet
echo "== one process, 200k rows, batch 256"
/usr/bin/time -f "wall %e s" timeout 150 $PY -m torchclf train /tmp/wl.parquet $FLAGS --out "$OUT/single"
echo "== torchrun --nproc-per-node 1 (DDP, NCCL), same flags"
/usr/bin/time -f "wall %e s" timeout 150 $PY -m torch.distributed.run --nproc-per-node 1 -m torchclf train /tmp/wl.parquet $FLAGS --out "$OUT/ddp1"
for r in single ddp1; do echo "== $r history"; cat "$OUT/$r/history.csv"; done
} > "$OUT/log.txt" 2>&1
cat "$OUT/log.txt" | tail -60
