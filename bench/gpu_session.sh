#!/usr/bin/env bash
# One call on a lent GPU machine (see DEVELOPERS.md): build in place, the GPU tests, and the GPU grid of
# `python -m pyrnn.bench` once per GPU backend. Logs and JSON under $OUT. Usage: bash bench/gpu_session.sh [quick]
# BACKENDS (default "triton cuda") may also name cuda-mma: the CUDA backend with its opt-in TF32 tensor-core
# recurrence (PYRNN_CUDA_MMA=1). PROFILE=1 adds bench/gpu_profile.py on the CUDA backend, without and with --mma.
# TEST_ARGS passes pytest options (e.g. -k "mma or tf32"); SKIP_TESTS=1 skips the tests.
# To time FlashRNN beside them, first `pip download flashrnn einops ninja --no-deps -d .whl --python-version 3.12
# --only-binary=:all: --platform manylinux2014_x86_64` here and carry .whl (FlashRNN builds its CUDA kernels at
# run time there, with the machine's nvcc and ninja).
set -u
OUT=${OUT:-/tmp/pyrnn_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYRNN_CUDA_ARCHS=${PYRNN_CUDA_ARCHS:-90a}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
if ls .whl/flashrnn-*.whl >/dev/null 2>&1; then  # FlashRNN as a peer: carried as wheels (no network there)
  python3 -m pip install -q --no-index --no-deps --target /tmp/peers .whl/*.whl && export PYTHONPATH=/tmp/peers \
    PATH=/tmp/peers/bin:$PATH
fi
start=$(date +%s)
python3 -m pip install -e . --no-build-isolation --no-deps -q >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -c "import pyrnn; print(pyrnn.backends())"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider --maxfail=6 \
    ${TEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -40
fi
for backend in ${BACKENDS:-triton cuda}; do
  mma=0
  [ "$backend" = cuda-mma ] && mma=1
  PYRNN_CUDA_MMA=$mma timeout "${BENCH_TIMEOUT:-240}" python3 -m pyrnn.bench --gpu-only --backend "${backend%-mma}" \
    --min-time 0.5 ${1:+--quick} --json "$OUT/gpu_$backend.json" --markdown "$OUT/gpu_$backend.md" \
    2>"$OUT/bench_$backend.err" >"$OUT/bench_$backend.txt"
  grep -B1 "ms, pyrnn" "$OUT/bench_$backend.err" | tail -40
done
if [ "${PROFILE:-0}" = 1 ]; then
  for flag in "" --mma; do
    timeout "${BENCH_TIMEOUT:-240}" python3 bench/gpu_profile.py --backend cuda $flag 2>&1 | tee "$OUT/profile${flag}.txt"
  done
fi
