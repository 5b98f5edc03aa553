#!/usr/bin/env python
"""The scaled-down suite behind the README's Results section: RL on the true reward against 350,
700 and 1,400 synthetic labels (perfect oracle, ensemble-variance queries, the paper's settings
otherwise) on five tasks, 3 seeds each: 5 x 3 x (3 + 1) = 60 runs, sized for about an hour on a
2-core machine (--scale 1). The step counts are a small fraction of the paper's, so the numbers are
a smoke test of the method, not a reproduction.

    python scripts/results_small.py --dry-run
    python scripts/results_small.py                       # writes runs/results-small
    rlhf-control report runs/results-small                # runs/results-small/report/results.md
"""

from rlhf_control.experiments.presets import MUJOCO_LABELS, preset_main
from rlhf_control.experiments.sweep import spec_from_dict

# Agent steps per task at --scale 1, chosen from measured throughput on 2 cores (see the Results notes).
STEPS = {"Pendulum-v1": 100_000, "InvertedPendulum-v5": 50_000, "Reacher-v5": 100_000,
         "HalfCheetah-v5": 250_000, "Hopper-v5": 250_000}


def build(args):
    unknown = sorted(set(args.tasks) - set(STEPS))
    if unknown:
        raise ValueError(f"--tasks {','.join(unknown)} not in this suite; choose from {','.join(STEPS)}")
    return spec_from_dict({
        "sweep": {"tasks": list(args.tasks), "seeds": list(range(args.seeds)), "labels": list(MUJOCO_LABELS),
                  "baseline": True},
        "overrides": {t: {"steps": max(1, round(STEPS[t] * args.scale))} for t in args.tasks},
    }, where="results_small.py")


if __name__ == "__main__":
    raise SystemExit(preset_main(__doc__, "runs/results-small", tuple(STEPS), 3, build))
