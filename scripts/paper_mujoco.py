#!/usr/bin/env python
"""The paper's MuJoCo experiment (Christiano et al. 2017, Figure 1): RL on the true reward against
350, 700 and 1,400 synthetic labels (perfect oracle, ensemble-variance queries) on the eight MuJoCo
tasks, 5 seeds each: 8 x 5 x (3 + 1) = 160 runs at the catalogue's full step counts.

    python scripts/paper_mujoco.py --dry-run              # the grid, and what is already done
    python scripts/paper_mujoco.py --scale 0.1            # a tenth of the steps, on this machine
    python scripts/paper_mujoco.py --backend ray --address HEAD:6379
    rlhf-control report runs/paper/mujoco                 # figure and table

Starting it again continues where it stopped (finished runs are skipped, others resume).
"""

from rlhf_control.experiments.presets import MUJOCO_LABELS, MUJOCO_TASKS, preset_main
from rlhf_control.experiments.sweep import spec_from_dict


def build(args):
    return spec_from_dict({"sweep": {"tasks": list(args.tasks), "seeds": list(range(args.seeds)),
                                     "labels": list(MUJOCO_LABELS), "baseline": True, "scale": args.scale}},
                          where="paper_mujoco.py")


if __name__ == "__main__":
    raise SystemExit(preset_main(__doc__, "runs/paper/mujoco", MUJOCO_TASKS, 5, build))
