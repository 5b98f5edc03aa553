#!/usr/bin/env bash
# Atari on a GPU (issue 13, item 1): the checks a session runs when it is lent a GPU machine, as one
# prepared command that ends within about 9 minutes, writing its figures under $OUT.
#
#   scripts/gpu_check.sh --wheels       # here, once: the packages the GPU image lacks, as wheels in .whl/
#                                       # (cp312, about 4 MB; .whl/ is git-ignored)
#   device run: bash scripts/gpu_check.sh   with carry [".whl"] and timeout_s 600
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu-check scripts/gpu_check.sh   # the same steps, tiny, on a CPU
#
# Steps, each under its own time limit (seconds in brackets), each writing one file to $OUT:
#   env.txt           nvidia-smi, Python, torch and the GPU torch sees                      [30]
#   tests.txt         the device tests (the CUDA-only one runs where CUDA is) and fast_cnn's [150]
#   bench_reward.txt  the CNN reward's pair-epoch, plain and fast path, on the device        [120]
#   bench_atari.txt   Pong, RLHF loop against plain A2C in one run: frames/s (target >= 0.8) [240]
#   pong.txt          an RLHF run on Pong (perfect labels, the paper's schedule) for the time left,
#   pong_metrics.csv  stopped with SIGINT (a checkpoint), its metrics
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(gymnasium farama-notifications stable-baselines3 sb3-contrib ale-py tomli-w pytest-xdist pytest-timeout)
if [[ "${1:-}" == "--wheels" ]]; then
  mkdir -p .whl
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
left() { echo $((${BUDGET:-540} - ($(date +%s) - START))); }

if [[ $QUICK == 1 ]]; then
  REWARD_ARGS=(--pairs 64 --atari-pairs 8 --atari-epochs 1 --atari-repeats 1 --skip-mujoco)
  ATARI_ARGS=(--frames 2000 --pretrain-labels 6 --pretrain-epochs 1 --n-envs 4)
  PONG_ARGS=(--labels 20 --pretrain-labels 10 --pretrain-epochs 1 --n-envs 4 --steps 4000)
  PONG_S=60
else
  REWARD_ARGS=(--pairs 3000 --atari-pairs 1000 --atari-repeats 2 --skip-mujoco)
  ATARI_ARGS=(--frames 400000)
  PONG_ARGS=()
  PONG_S=0  # the time left
fi

{
  date -u; nvidia-smi || echo "no nvidia-smi"
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  python3 -c "import gymnasium, stable_baselines3, ale_py; print('gymnasium', gymnasium.__version__,
'sb3', stable_baselines3.__version__, 'ale-py', ale_py.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== tests"
timeout 150 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_device.py tests/test_fast_cnn.py \
  > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"

echo "== bench_reward ($DEVICE)"
timeout 120 python3 scripts/bench_reward.py --device "$DEVICE" "${REWARD_ARGS[@]}" > "$OUT/bench_reward.txt" 2>&1
tail -8 "$OUT/bench_reward.txt"

echo "== bench_atari ($DEVICE)"
timeout 240 python3 scripts/bench_atari.py --device "$DEVICE" --out /tmp/bench_atari "${ATARI_ARGS[@]}" \
  > "$OUT/bench_atari.txt" 2>&1
grep -E "^(A2C|RLHF|ratio|\|)" "$OUT/bench_atari.txt" || tail -20 "$OUT/bench_atari.txt"

secs=$(left)
[[ $PONG_S -gt 0 ]] && secs=$PONG_S
echo "== Pong RLHF run for ${secs} s ($DEVICE)"
if [[ $secs -gt 30 ]]; then
  rm -rf /tmp/pong-run
  timeout -s INT -k 60 "$secs" python3 -m rlhf_control.cli train --task Pong --device "$DEVICE" --no-progress \
    --run-dir /tmp/pong-run "${PONG_ARGS[@]}" > "$OUT/pong.txt" 2>&1
  echo "exit code $? (130 or 124: stopped at its time, after a checkpoint)" >> "$OUT/pong.txt"
  cp /tmp/pong-run/metrics.csv "$OUT/pong_metrics.csv" 2>/dev/null
  tail -4 "$OUT/pong.txt"
  [[ -f "$OUT/pong_metrics.csv" ]] && tail -3 "$OUT/pong_metrics.csv" | cut -c1-200
else
  echo "no time left for it" > "$OUT/pong.txt"
fi
echo "done in $(( $(date +%s) - START )) s"
