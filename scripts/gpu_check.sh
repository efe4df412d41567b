#!/usr/bin/env bash
# The GPU check, made to work in one try on a bare GPU machine: no network, no cargo, PyTorch, Triton,
# NumPy, Numba, SciPy, pandas... preinstalled, but not pydantic, SQLAlchemy, ruptures or hatchling.
#   here:    bash scripts/gpu_wheels.sh     (those wheels and the Rust abi3 wheel into .whl/)
#   there:   bash scripts/gpu_check.sh      (from the repository root, with .whl carried; $OUT set)
# Steps, each under its own time limit (they add up to 470 s, within the 8 minutes it is given):
#   machine    the GPU, driver, Python and library versions
#   install    the carried wheels, then the lab built from this tree (hatchling, no network), into
#              $SITE on PYTHONPATH; `elbolab list` from outside the tree
#   tests      the CUDA variants' and torch's GPU tests, the Triton kernel in the interpreter and
#              compiled for sm_90, the Rust wheel's tests
#   run        the limits probe (CPU and GPU), then torch, torch-compile, torch-triton and
#              torch-cudagraph on CUDA: the four workloads (the Triton variants implement two; the
#              plan lists the other two for them as skipped) at B=128 and 8192, float32 and
#              float64, eps given and sampled
#   baseline   numpy at the elbo and elbo_grad cases on the CPU, eps given, in a file of its own
#              (its iwae and vae_step at B=8192 cost ~10 s each of float64 reference; results/ has them)
#   launches   what one call of each CUDA variant launches (profiler)
#   train      the digits VAE through numpy, torch (CPU and CUDA) and rust
#   verify     every planned case measured and ok, GPU limits present, one kernel a Triton call
# Every step's exit status is recorded in $OUT/steps.tsv, a step that overruns its limit as TIMEOUT;
# the whole log and the results files are kept under $OUT, named after the GPU; the script ends with
# status 1 if any step failed. Without a GPU the same steps run: CUDA cases are skipped with their
# reason, and the verify step says that nothing on a GPU was measured.
set -uo pipefail
export PYTHONUNBUFFERED=1

OUT=${OUT:-/tmp/elbolab-gpu}
TIME_SCALE=${TIME_SCALE:-1} # multiplies every limit: for a slower machine than the GPU one's 16 cores
TEST_JOBS=${TEST_JOBS:-8} # pytest-xdist workers: the GPU machine has 16 cores
export PY=${PYTHON:-python3} WHEELS=${WHEELS:-.whl} SITE=${SITE:-/tmp/elbolab-site} ROOT=$PWD
mkdir -p "$OUT"

if command -v nvidia-smi >/dev/null 2>&1 && gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) && [ -n "$gpu" ]; then
  NAME=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
else
  NAME=no-gpu
fi
LOG="$OUT/gpu-check-$NAME.log"
STEPS="$OUT/steps.tsv"
CUDA_RUN="$OUT/gpu-check-$NAME.json"
CPU_RUN="$OUT/gpu-check-$NAME-cpu.json"
LAUNCHES="$OUT/gpu-check-$NAME-launches.json"
rm -f "$CUDA_RUN" "$CPU_RUN" "$LAUNCHES" # this check's own files, from an earlier try in the same $OUT
: >"$LOG"
printf 'step\texit\tseconds\tstatus\n' >"$STEPS"
FAILED=()
T0=$(date +%s)

# step NAME SECONDS COMMAND...: run it under `timeout` (which signals the command's whole process
# group, workers included) in a fresh bash (so a command may be a function of this script), its
# output to the terminal and the log, its exit status recorded.
step() {
  local name=$1 limit=$(($2 * TIME_SCALE)) t0 rc took status
  shift 2
  t0=$(date +%s)
  echo "== $name (limit ${limit} s)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  took=$(($(date +%s) - t0))
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${limit} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$status" >>"$STEPS"
  echo "== $name: $status in ${took} s" | tee -a "$LOG"
  [ "$status" = ok ] || FAILED+=("$name")
}

show_machine() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || return 1
  else
    echo "no nvidia-smi: no GPU here"
  fi
  "$PY" -V && nproc && uname -srm &&
    "$PY" -c 'import torch, triton, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "| triton", triton.__version__, "| numpy", numpy.__version__)'
}

install_lab() {
  ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: run scripts/gpu_wheels.sh here and carry it"; return 1; }
  rm -rf "$SITE" && mkdir -p "$SITE" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "$WHEELS"/*.whl || return 1
  # the lab from this tree, built by the carried hatchling (no build isolation: nothing to fetch)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --disable-pip-version-check \
    --upgrade --target "$SITE" "$ROOT" || return 1
  # from outside the tree, so what imports is what was installed
  cd / && "$PY" -c 'import elbolab, backends, elbolab_rust, pydantic, sqlalchemy, ruptures
for m in (elbolab, backends, elbolab_rust): print(m.__name__, "from", m.__file__)' && "$PY" -m elbolab list
}
export -f show_machine install_lab
export PYTHONPATH=$SITE

SIZES=(--batch 128,8192 --dtype float32,float64 --variant eps=given,eps=sampled --threads 1 --quick)
# torch's CPU-only tests (its cpu device, compiled on the CPU) are left to the CPU suite; the rest
# of the three files runs: the GPU tests, the kernel in the interpreter and for sm_90, the Rust wheel
step machine 10 show_machine
step install 40 install_lab
step tests 80 "$PY" -m pytest -q -p no:cacheprovider -n "$TEST_JOBS" tests/test_gpu_variants.py \
  tests/test_torch_backend.py tests/test_rust_backend.py -k "not torch_cpu and not compile_cpu"
step run 230 "$PY" -m elbolab run --backend torch,torch-compile,torch-triton,torch-cudagraph --device cuda \
  --workload elbo,elbo_grad,iwae,vae_step "${SIZES[@]}" --timeout 90 --out "$CUDA_RUN"
# the CPU baseline the GPU figures are set against: NumPy with eps given, no null control (a
# second NumPy). With eps drawn inside the call every checked call is checked against a reference
# rebuilt from its own draw, 5 s a case at batch 8192: on the 2-core VM the baseline with both
# variants and the control took 72 s, over this step's limit; this one 19 s
step baseline 30 "$PY" -m elbolab run --backend numpy --device cpu --workload elbo,elbo_grad \
  --batch 128,8192 --dtype float32,float64 --variant eps=given --threads 1 --quick --no-control \
  --timeout 30 --no-limits --out "$CPU_RUN"
step launches 40 "$PY" scripts/gpu_launches.py --out "$LAUNCHES"
step train 30 "$PY" -m elbolab train --backend numpy,torch,rust --steps 150 --out "$CUDA_RUN"
step verify 10 "$PY" scripts/gpu_verify.py --cuda "$CUDA_RUN" --cpu "$CPU_RUN" --launches "$LAUNCHES"

{
  echo "== steps ($(($(date +%s) - T0)) s in all; log and results in $OUT)"
  column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
} | tee -a "$LOG"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "== FAILED: ${FAILED[*]}" | tee -a "$LOG"
  exit 1
fi
echo "== all steps ok" | tee -a "$LOG"
