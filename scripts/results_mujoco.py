#!/usr/bin/env python
"""The paper's MuJoCo results at a scale a 2-core machine can run: the eight tasks, 3 seeds, with
each task's agent steps chosen so that RL on the true reward clearly beats a random policy (measured:
see the README's "The eight MuJoCo tasks"). Three experiments in one sweep directory, so that they
share their RL baselines and the full method's 700-label runs:

    labels      RL on the true reward against 350, 700 and 1,400 perfect synthetic labels
                (the paper's Figure 1): 8 x 3 x (1 + 3) = 96 runs
    ablations   the paper's Figure 5 at 700 labels on HalfCheetah and Hopper: the full method, random
                queries, no ensemble, no online queries, no L2, clips of one step, regression on the
                true clip return, and RL: 2 x 3 x (7 + 1) = 48 runs
    teachers    B-Pref's scripted teachers at 700 labels on HalfCheetah and Hopper: perfect,
                stochastic, mistake, skip, equal, myopic (B-Pref's parameters), and RL: 2 x 3 x 7 = 42
                runs (the ablations and teachers add 36 and 30 runs to the labels experiment)

Every run evaluates its deterministic policy about ten times along the way (``--eval-episodes``
episodes each) and at the end; the figures and tables use those evaluations.

    python scripts/results_mujoco.py --dry-run                    # the grid and what is done
    python scripts/results_mujoco.py --labels 700                 # RL and 700 labels first
    python scripts/results_mujoco.py                              # then 350 and 1,400
    python scripts/results_mujoco.py --experiment ablations
    python scripts/results_mujoco.py --experiment teachers
    cd runs/results-mujoco                                        # figures and tables:
    rlhf-control report */rl-true-reward-s* */L*-perfect-variance-s* --out report-labels
    rlhf-control report {HalfCheetah,Hopper}-v5/rl-true-reward-s* {HalfCheetah,Hopper}-v5/L700-perfect-* \
        --out report-ablations
    rlhf-control report {HalfCheetah,Hopper}-v5/rl-true-reward-s* {HalfCheetah,Hopper}-v5/L700-*-variance-s* \
        --out report-teachers

Starting a command again continues where it stopped: finished runs are skipped, others resume.
"""

import sys

from rlhf_control.experiments.presets import (
    BPREF_TEACHERS,
    MUJOCO_LABELS,
    MUJOCO_TASKS,
    flag_value,
    positive_int,
    preset_main,
)
from rlhf_control.experiments.sweep import ABLATIONS, spec_from_dict

# Agent steps per task (2 envs x 1,024 steps per TRPO iteration), chosen from RL-on-the-true-reward
# pilot runs on this machine (seed 0, deterministic evaluations; random policy in brackets) so that RL
# clearly beats a random policy: Swimmer 344 at 143k (-1); Walker2d 500-1,724 from 368k (-982);
# InvertedDoublePendulum -3,635 at 200k (-15,622) with fallen poles left lying, and with a fall
# restarting them (the catalogue's entry since 2026-12-05) 9,330 at 200k in the grid's seed 0 (5,976);
# InvertedPendulum the maximum, 1,000, from 40k (-824; with a fall restarting the pole, see
# envs/mujoco.toml); HalfCheetah and Hopper from earlier runs. Reacher (-7.9 against -10.5) was
# marginal at 100k, so it gets 300k; Ant reached only 1,051 at 400k against the random policy's 988
# (which earns the healthy reward standing still), so it got 1M; there it still stood still (1,048),
# until its catalogue entry started the policy at log std -1 (2026-12-06): then above random at all
# ten evaluations of a 1M pilot (1,092-1,717, 1,157 at 1M), so it keeps 1M.
STEPS = {"Reacher-v5": 300_000, "HalfCheetah-v5": 300_000, "Hopper-v5": 300_000, "Walker2d-v5": 400_000,
         "Swimmer-v5": 200_000, "Ant-v5": 1_000_000, "InvertedPendulum-v5": 100_000,
         "InvertedDoublePendulum-v5": 200_000}
ITERATION_STEPS = 2048  # the catalogue's MuJoCo agent: 2 envs x 1,024 steps
EVALUATIONS = 10  # deterministic evaluations along each run, besides the final one
# Evaluation episodes: Reacher's last 50 steps and start from a random target, so it gets more.
EVAL_EPISODES = {"Reacher-v5": 20}
EXPERIMENTS = {"labels": MUJOCO_TASKS, "ablations": ("HalfCheetah-v5", "Hopper-v5"),
               "teachers": ("HalfCheetah-v5", "Hopper-v5")}
FIXED_LABELS = 700  # the budget of the ablations and teachers


def overrides(tasks, scale: float, eval_episodes: int | None) -> dict:
    """Per task: its steps (times ``scale``) and an evaluation every tenth of the run."""
    out = {}
    for t in tasks:
        steps = max(1, round(STEPS[t] * scale))
        out[t] = {"steps": steps, "eval_every": max(1, steps // ITERATION_STEPS // EVALUATIONS),
                  "eval_episodes": eval_episodes or EVAL_EPISODES.get(t, 5)}
    return out


def main(argv: list[str]) -> int:
    experiment = flag_value(argv, "--experiment", "labels")  # sets the default --tasks
    tasks = EXPERIMENTS.get(experiment, MUJOCO_TASKS)

    def extra(p):
        p.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="labels",
                       help="labels (default), ablations or teachers")
        p.add_argument("--labels", type=positive_int, nargs="+",
                       help=f"label budgets (default {' '.join(map(str, MUJOCO_LABELS))} for labels, "
                            f"{FIXED_LABELS} otherwise)")
        p.add_argument("--eval-episodes", type=positive_int,
                       help="episodes per evaluation (default 5; Reacher 20)")

    def build(args):
        unknown = sorted(set(args.tasks) - set(STEPS))
        if unknown:
            raise ValueError(f"--tasks {','.join(unknown)} not in this suite; choose from {','.join(STEPS)}")
        sweep = {"tasks": list(args.tasks), "seeds": list(range(args.seeds)), "baseline": True,
                 "labels": list(args.labels or (MUJOCO_LABELS if experiment == "labels" else (FIXED_LABELS,)))}
        if experiment == "ablations":
            sweep["ablations"] = list(ABLATIONS)
        elif experiment == "teachers":
            sweep["oracles"] = list(BPREF_TEACHERS)
        return spec_from_dict({"sweep": sweep, "overrides": overrides(args.tasks, args.scale, args.eval_episodes)},
                              where="results_mujoco.py")

    return preset_main(__doc__, "runs/results-mujoco", tasks, 3, build, extra_args=extra, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
