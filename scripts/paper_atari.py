#!/usr/bin/env python
"""The paper's Atari experiment (Christiano et al. 2017, Figure 2): RL on the true reward against
3,300, 5,500 and 10,000 synthetic labels on the seven games, 3 seeds each: 7 x 3 x (3 + 1) = 84 runs
at the catalogue's full step counts (A2C, 16 envs).

    python scripts/paper_atari.py --dry-run
    python scripts/paper_atari.py --scale 0.05 --tasks ALE/Pong-v5,ALE/BeamRider-v5
    python scripts/paper_atari.py --backend ray --address HEAD:6379
    rlhf-control report runs/paper/atari

Starting it again continues where it stopped (finished runs are skipped, others resume).
"""

from rlhf_control.experiments.presets import ATARI_LABELS, ATARI_TASKS, preset_main
from rlhf_control.experiments.sweep import spec_from_dict


def build(args):
    return spec_from_dict({"sweep": {"tasks": list(args.tasks), "seeds": list(range(args.seeds)),
                                     "labels": list(ATARI_LABELS), "baseline": True, "scale": args.scale}},
                          where="paper_atari.py")


if __name__ == "__main__":
    raise SystemExit(preset_main(__doc__, "runs/paper/atari", ATARI_TASKS, 3, build))
