#!/usr/bin/env bash
# Atari on a GPU (issue 13): the checks a session runs when it is lent a GPU machine, as one prepared
# command that ends within about 9 minutes, writing its figures under $OUT.
#
#   scripts/gpu_check.sh --wheels       # here, once: the packages the GPU image lacks, as wheels in .whl/
#                                       # (cp312, about 4 MB; .whl/ is git-ignored)
#   mkdir -p .pong && cp <a Pong run>/checkpoints/ckpt-*/agent.zip .pong/   # the trained policy of (b)
#   device run: bash scripts/gpu_check.sh   with carry [".whl"] (QUALITY=1: [".whl", ".pong"]), timeout_s 600
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu-check scripts/gpu_check.sh   # the same steps, tiny, on a CPU
#
# Steps, each under its own time limit, each writing its output to $OUT:
#   env.txt           nvidia-smi, Python, torch and the GPU torch sees; how the package was made importable
#   tests.txt         the device tests (the CUDA-only one runs where CUDA is) and fast_cnn's
#   bench_atari.txt   Pong, plain A2C and the RLHF loop in one run, the loop once with --no-reward-wait and
#   bench_atari.json  once waiting for each retraining: frames/s of each against A2C's (target >= 0.8)
#   bench_reward.txt  the CNN reward's pair-epoch, plain and fast path, on the device
# STEPS=tests,atari,reward picks some of them. With QUALITY=1 or STEPS=quality (and .pong/agent.zip)
# also, for the time left (LABELS="3000 1000": the label counts):
#   record.txt        clips of the random and the trained Pong policy (emulators and policy on the CPU)
#   quality.txt       scripts/atari_evidence.py (b): the CNN reward from $LABELS (default 1,000) perfect
#   reward_quality.json  labels on those clips, on the device
# The image's own Python (3.12, its torch) runs everything; the project's pins do not apply there.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(gymnasium farama-notifications stable-baselines3 sb3-contrib ale-py tomli-w)
if [[ "${1:-}" == "--wheels" ]]; then
  mkdir -p .whl
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
POLICY=${POLICY:-.pong/agent.zip}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
stamp() { echo "[$(( $(date +%s) - START )) s] $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
# The package maps rlhf_control.envs to envs/ (pyproject.toml): an install without its dependencies,
# or, where that cannot be built, the same mapping as a link inside this copy of the tree.
how="installed (pip -e, no deps)"
if ! python3 -c "import rlhf_control.envs" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || { ln -sfn ../envs rlhf_control/envs; how="linked (rlhf_control/envs -> envs)"; }
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  how="already importable"
fi

if [[ $QUICK == 1 ]]; then
  REWARD_ARGS=(--pairs 64 --atari-pairs 8 --atari-epochs 1 --atari-repeats 1 --skip-mujoco)
  ATARI_ARGS=(--frames 2000 --pretrain-labels 6 --pretrain-epochs 1 --n-envs 4)
  CLIPS=60; Q_ARGS=(--labels 30 20 --pretrain-epochs 1 --rounds 2 --reward-epochs 1)
else
  REWARD_ARGS=(--pairs 3000 --atari-pairs 500 --atari-repeats 1 --skip-mujoco)
  ATARI_ARGS=(--frames 200000)
  CLIPS=2000; Q_ARGS=(--labels ${LABELS:-1000})  # (unquoted: LABELS may hold several)
fi

{
  date -u; nvidia-smi || echo "no nvidia-smi"; nproc
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  python3 -c "import numpy, gymnasium, stable_baselines3, ale_py; print('numpy', numpy.__version__, 'gymnasium',
gymnasium.__version__, 'sb3', stable_baselines3.__version__, 'ale-py', ale_py.__version__)"
  python3 -c "import rlhf_control.envs; print('rlhf_control: $how')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

STEPS=${STEPS:-tests,atari,reward}  # which of the steps below (quality: QUALITY=1 or STEPS=quality)
has() { [[ ",$STEPS," == *",$1,"* ]]; }
[[ ${QUALITY:-0} == 1 ]] && STEPS="$STEPS,quality"

if has tests; then
  stamp "tests"
  timeout 80 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_device.py tests/test_fast_cnn.py -rs \
    > "$OUT/tests.txt" 2>&1
  tail -4 "$OUT/tests.txt"
fi

if has atari; then
  stamp "bench_atari ($DEVICE)"
  timeout 330 python3 scripts/bench_atari.py --device "$DEVICE" --out /tmp/bench_atari --reward-wait both "${ATARI_ARGS[@]}" \
    > "$OUT/bench_atari.txt" 2>&1
  echo "exit code $?" >> "$OUT/bench_atari.txt"
  cp /tmp/bench_atari/results.json "$OUT/bench_atari.json" 2>/dev/null
  grep -E "^(A2C|RLHF|ratio|\||exit|      each)" "$OUT/bench_atari.txt" || tail -20 "$OUT/bench_atari.txt"
fi

secs=$(( $(left) - 10 ))
if has reward && [[ $secs -gt 20 ]]; then
  stamp "bench_reward ($DEVICE) for at most $secs s"
  timeout "$secs" python3 scripts/bench_reward.py --device "$DEVICE" "${REWARD_ARGS[@]}" > "$OUT/bench_reward.txt" 2>&1
  echo "exit code $?" >> "$OUT/bench_reward.txt"
  tail -10 "$OUT/bench_reward.txt"
fi

AE=/tmp/atari-evidence
if has quality && [[ -f "$POLICY" ]]; then
  stamp "recording $CLIPS clips of each Pong policy"
  python3 -c "
import sys; sys.path.insert(0, 'scripts')
from pathlib import Path
import atari_evidence as ae
from rlhf_control.config import RunConfig, resolve
ae.quality_clips(resolve(RunConfig(task='ALE/Pong-v5', seed=0)), Path('$POLICY'), $CLIPS, 0, Path('$AE/clips'))
" > "$OUT/record.txt" 2>&1
  echo "exit code $?" >> "$OUT/record.txt"
  secs=$(left)
  stamp "quality (b) on $DEVICE for at most $secs s"
  if [[ $secs -gt 20 ]]; then
    timeout -k 10 "$secs" python3 scripts/atari_evidence.py --stages quality --policy "$POLICY" --device "$DEVICE" \
      --threads 4 --clips "$CLIPS" "${Q_ARGS[@]}" --out "$AE" > "$OUT/quality.txt" 2>&1
    echo "exit code $? (124: stopped at its time; the finished label counts are in reward_quality.json)" >> "$OUT/quality.txt"
    cp "$AE/reward_quality.json" "$OUT/" 2>/dev/null
    grep -E "N [0-9]+|exit" "$OUT/quality.txt"
  fi
fi
stamp "done"
