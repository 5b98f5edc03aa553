#!/usr/bin/env python
"""B-Pref's scripted teachers (Lee et al. 2021) as the oracle on the paper's eight MuJoCo tasks:
the perfect oracle against the stochastic (beta 1), mistake (epsilon 0.1), skip, equal and myopic
(gamma 0.9) teachers at B-Pref's default settings, with each task's label budget, 5 seeds, plus RL
on the true reward.

    python scripts/bpref_teachers.py --dry-run
    python scripts/bpref_teachers.py --scale 0.1 --tasks Hopper-v5,Walker2d-v5
    python scripts/bpref_teachers.py --teachers perfect stochastic:beta=2 mistake:epsilon=0.2+myopic
    rlhf-control report runs/bpref/teachers
"""

from rlhf_control.experiments.presets import BPREF_TEACHERS, MUJOCO_TASKS, preset_main
from rlhf_control.experiments.sweep import spec_from_dict


def extra(p):
    p.add_argument("--teachers", nargs="+", default=list(BPREF_TEACHERS), help=f"oracle specs (default {' '.join(BPREF_TEACHERS)})")
    p.add_argument("--labels", type=int, help="label budget (default: each task's own)")


def build(args):
    sweep = {"tasks": list(args.tasks), "seeds": list(range(args.seeds)), "oracles": list(args.teachers),
             "baseline": True, "scale": args.scale}
    if args.labels is not None:
        sweep["labels"] = [args.labels]
    return spec_from_dict({"sweep": sweep}, where="bpref_teachers.py")


if __name__ == "__main__":
    raise SystemExit(preset_main(__doc__, "runs/bpref/teachers", MUJOCO_TASKS, 5, build, extra_args=extra))
