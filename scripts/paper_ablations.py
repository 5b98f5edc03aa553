#!/usr/bin/env python
"""The paper's ablations (Christiano et al. 2017), each next to the
full method and RL on the true reward:

    random-queries          queries drawn uniformly at random (selector random)
    no-ensemble             one reward predictor (reward_members 1), so queries are random too
    no-online-queries       every label asked before RL starts (schedule offline)
    no-regularization       no L2 regularisation (reward_l2 false)
    no-segments             clips of length 1 (clip_length 1)
    true-return-regression  the reward fitted to true segment returns by regression, no comparisons

MuJoCo: the eight tasks, 700 labels, 5 seeds; Atari (--suite atari): the seven games, 5,500 labels,
3 seeds. These budgets and seed counts are this project's choice (the middle budget of each suite's
main experiment); PAPER.md does not give the ablation figures' own.

    python scripts/paper_ablations.py --dry-run
    python scripts/paper_ablations.py --suite atari --scale 0.05 --ablations full random-queries
    rlhf-control report runs/paper/ablations-mujoco
"""

import sys

from rlhf_control.experiments.presets import ATARI_TASKS, MUJOCO_TASKS, flag_value, preset_main
from rlhf_control.experiments.sweep import ABLATIONS, spec_from_dict

SUITES = {"mujoco": (MUJOCO_TASKS, 700, 5), "atari": (ATARI_TASKS, 5500, 3)}


def main(argv: list[str]) -> int:
    suite = flag_value(argv, "--suite", "mujoco")  # sets the defaults of --tasks, --seeds and --labels
    tasks, labels, seeds = SUITES.get(suite, SUITES["mujoco"])

    def extra(p):
        p.add_argument("--suite", choices=sorted(SUITES), default="mujoco", help="mujoco (default) or atari")
        p.add_argument("--labels", type=int, default=labels, help=f"label budget (default {labels})")
        p.add_argument("--ablations", nargs="+", default=list(ABLATIONS),
                       help="subset of: " + " ".join(ABLATIONS) + " (default all; full = the unablated method)")

    def build(args):
        return spec_from_dict({"sweep": {"tasks": list(args.tasks), "seeds": list(range(args.seeds)),
                                         "labels": [args.labels], "ablations": list(args.ablations),
                                         "baseline": True, "scale": args.scale}},
                              where="paper_ablations.py")

    return preset_main(__doc__, f"runs/paper/ablations-{suite}", tasks, seeds, build, extra_args=extra, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
