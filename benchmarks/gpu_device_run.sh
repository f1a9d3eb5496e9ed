#!/usr/bin/env bash
# The GPU Table-1 run on a lent device machine (no network there), from the repository root:
#
#     bash benchmarks/gpu_device_run.sh          # results and a log under $OUT (default ./gpu-out)
#
# Needs the wheels in .gpu-wheels/ (untracked; carry it: run(..., carry=[".gpu-wheels"])): dask,
# distributed, zarr and their dependencies that the device image lacks. Steps, each under its own
# `timeout` and all within BUDGET seconds (default 420): install the wheels; nvidia-smi; the accuracy
# check on a 20,000 x 2,000 set against the dense oracle and the CPU library; the ML-20M-shaped
# benchmark for k = 10 500 1000 2000 5000 with the library's default eigensolver (EIG_METHODS for more)
# (making the data set is most of it); the CPU library at
# k = 1000 on all cores, if time is left. Results are written after each k, so a step cut short
# keeps what it finished. Files under $OUT: device-run.log, table1-gpu{,-check,-cpu}.{json,md}.
#
# Local dry run of the whole script on CPU (no GPU): BACKEND=numpy USERS=3000 ITEMS=500 KS="10 50" \
#   CHECK_ARGS="--check-methods auto subspace --check-users 3000 --check-items 400 --check-block-size 128" CPU_K=20 \
#   PY=/path/to/python3.12 OUT=/tmp/gpu-dry bash benchmarks/gpu_device_run.sh
set -u -o pipefail

PY=${PY:-python3}
BUDGET=${BUDGET:-420}
BACKEND=${BACKEND:-cupy}
KS=${KS:-"10 500 1000 2000 5000"}
CPU_K=${CPU_K:-1000}
EIG_METHODS=${EIG_METHODS:-auto}  # auto: the library's default_method(k); e.g. "auto krylov" to time both
CHECK_KS=${CHECK_KS:-"10 500"}
CHECK_ARGS=${CHECK_ARGS:-"--check-methods auto subspace krylov"}
EXTRA_ARGS=${EXTRA_ARGS:-}   # e.g. "--inverse whole" or "--scheduler synchronous" for every bench_gpu.py call
SIZE_ARGS=""
[ -n "${USERS:-}" ] && SIZE_ARGS="$SIZE_ARGS --users $USERS"
[ -n "${ITEMS:-}" ] && SIZE_ARGS="$SIZE_ARGS --items $ITEMS"
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OUT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # edlae_dask from this tree, also in LocalCluster workers
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
LOG="$OUT/device-run.log"
exec > >(tee -a "$LOG") 2>&1

ts() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
# step LIMIT NAME CMD...: run CMD under `timeout`, at most LIMIT s and what is left of BUDGET
step() {
    local limit=$1 name=$2; shift 2
    local left=$((BUDGET - SECONDS - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then ts "SKIP $name: only ${left}s of the ${BUDGET}s budget left"; return 99; fi
    ts "START $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    ts "END $name: rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
    return $rc
}

ts "gpu_device_run.sh: backend $BACKEND, budget ${BUDGET}s, OUT=$OUT, $(nproc) cores, $($PY --version 2>&1)"

PKGS="dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
      tornado==6.6.1 zict==3.0.0 tblib==3.2.2 partd==1.4.2 locket==1.0.0"
if $PY -c "import dask, distributed, zarr" 2>/dev/null; then
    ts "dask, distributed, zarr already importable: no install"
else
    # with dependency resolution against what is installed; if an installed package is too old
    # for that, the same wheels without resolution (the imports below are the real test)
    step 120 "install wheels" $PY -m pip install -q --no-index --find-links .gpu-wheels $PKGS \
        || step 120 "install wheels (--no-deps)" $PY -m pip install -q --no-index --find-links .gpu-wheels --no-deps $PKGS
fi
step 60 "imports" $PY -c "
import numpy, scipy, dask, distributed, zarr, edlae_dask.model, edlae_dask.io.interactions
print('numpy', numpy.__version__, 'scipy', scipy.__version__, 'dask', dask.__version__, 'distributed',
      distributed.__version__, 'zarr', zarr.__version__)
if '$BACKEND' == 'cupy':
    import cupy; print('cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())
" || { ts "FATAL: imports failed"; exit 2; }
command -v nvidia-smi >/dev/null && step 20 "nvidia-smi" nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv

# rc 3: the check ran but found a difference; 1: an exception (its traceback is in the log)
step 150 "accuracy check" $PY benchmarks/bench_gpu.py --backend "$BACKEND" --check-only --k $CHECK_KS $CHECK_ARGS $EXTRA_ARGS \
    --out "$OUT/table1-gpu-check"
step 300 "GPU benchmark" $PY benchmarks/bench_gpu.py --backend "$BACKEND" --k $KS --eig-method $EIG_METHODS $SIZE_ARGS $EXTRA_ARGS \
    --out "$OUT/table1-gpu"
if [ -n "$CPU_K" ] && [ "$CPU_K" != 0 ]; then
    step 200 "CPU library k=$CPU_K" $PY benchmarks/bench_gpu.py --backend "$BACKEND" --k $SIZE_ARGS \
        --cpu-library-k "$CPU_K" --out "$OUT/table1-gpu-cpu"
fi
ts "done; files under $OUT:"
ls -la "$OUT"
