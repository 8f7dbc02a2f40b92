#!/usr/bin/env bash
# GPU checks, for a CUDA machine with torch but without the project's other packages.
# Installs only the wheels carried in .whl/ (faiss-cpu, open_clip_torch, ftfy, wcwidth; see
# "GPU checks" in README.md), runs the GPU tests and the GPU benchmarks, prints a short table.
# Usage: bash tools/gpu_check.sh      (logs go to $OUT when set, else /tmp/gpu_check)
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
logs=${OUT:-/tmp/gpu_check}
mkdir -p "$logs"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
# The project itself, installed (not on PYTHONPATH): its templates are package data mapped from data/.
python3 -m pip install -q --no-deps --no-index --no-build-isolation --no-compile --target /tmp/site . \
  || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'faiss', faiss.__version__, 'faiss gpus', faiss.get_num_gpus())"

status() { [ "$1" -eq 0 ] && echo ok || echo "FAIL ($1)"; }

timeout 150 python3 -P -m pytest -q -p no:cacheprovider -rs \
  tests/test_encode_gpu.py tests/test_finetune.py tests/test_index.py tests/test_affinity.py \
  >"$logs/pytest.log" 2>&1
tests_rc=$?
timeout 100 python3 tools/bench_extract.py --device cuda --images 2048 --single 32 \
  --batch-size 512 --workers 12 >"$logs/bench_extract.txt" 2>"$logs/bench_extract.log"
extract_rc=$?

echo
echo "| check | result |"
echo "|---|---|"
echo "| GPU tests (encode/finetune/index/affinity) | $(status $tests_rc): $(tail -n 1 "$logs/pytest.log") |"
echo "| bench_extract on cuda | $(status $extract_rc) |"
echo
cat "$logs/bench_extract.txt"
grep -E "SKIPPED|FAILED|Error" "$logs/pytest.log" | head -20
