#!/usr/bin/env bash
# One prepared run on a GPU machine (no network; PyTorch, Numba, NumPy... preinstalled there):
# the CUDA and Rust tests, then CPU and CUDA cases through `elbolab run` and the training run, all
# results kept under $OUT. The Rust extension travels as the abi3 wheel built here (target/wheels).
#   device: bash scripts/gpu_check.sh      (with target/wheels carried)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/elbolab-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
RUN="$OUT/h200.json"

# No install needed: the lab runs from the tree; its backends are named explicitly
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ELBOLAB_BACKENDS=backends.numpy:backend,backends.torch:backend,backends.torch:compiled_backend,backends.numba:backend,backends.numba:parallel_backend,backends.rust:backend,backends.rust:inner_loop_backend,backends.rust:tutorial_backend
ls target/wheels/elbolab_rust-*.whl >/dev/null 2>&1 && \
  $PY -m pip install -q --no-deps --no-index --force-reinstall target/wheels/elbolab_rust-*.whl 2>&1 | tail -1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -V; nproc; } | tee "$OUT/machine.txt"
$PY -m elbolab.cli list > "$OUT/list.txt" 2>&1

echo "== tests: CUDA (torch) and the Rust wheel on this CPU"
timeout 60 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_backend.py 2>&1 | tee "$OUT/tests.log" | tail -1
timeout 60 $PY -m pytest -q -p no:cacheprovider tests/test_rust_backend.py 2>&1 | tee -a "$OUT/tests.log" | tail -1

echo "== elbolab run (cpu and cuda)"
timeout 200 $PY -m elbolab.cli run --backend numpy,torch,rust,rust-inner,rust-tutorial,numba,numba-parallel \
  --workload elbo,elbo_grad,iwae,vae_step --batch 128,8192 --dtype float32,float64 \
  --threads 1 --quick --out "$RUN" 2>&1 | tail -2

echo "== torch.compile on cuda"
timeout 60 $PY -m elbolab.cli run --backend torch-compile --device cuda --workload elbo,elbo_grad \
  --batch 128,8192 --dtype float32,float64 --variant eps=given --threads 1 --quick \
  --out "$RUN" --resume 2>&1 | tail -2

echo "== training on the digits"
timeout 45 $PY -m elbolab.cli train --backend numpy,torch,rust --out "$RUN" 2>&1 | tail -8
$PY -m elbolab.cli show "$RUN" > "$OUT/summary.txt" 2>&1
echo "== done"
