#!/usr/bin/env python
"""Evidence that an Atari game is learned from preferences, at a scale a small machine can run.

Three stages (``--stages``, default all; each skips what an earlier start of the same command
finished, and picks up what it left half done):

(a) ``policy``: A2C on the game's true reward (the catalogue's agent and hyperparameters, RL on the
    true reward as every baseline here: ``rlhf-control sweep`` with ``rlhf = false``) for
    ``--frames``; its run directory checkpoints as it goes, so a stopped run resumes and a finished
    one is reused. Its last checkpoint is the "trained" policy of (b).
(b) ``quality``: the CNN reward model of the paper learned without RL from ``--labels`` perfect
    labels (default 300, 1,000 and 3,000) on clips of the random and the trained policy, with
    ``scripts/bench_reward_quality.py``'s machinery (clips recorded as the loop records them, score
    masked; labels in rounds; the ensemble, fitter and trainer the loop builds). Scores on held-out
    clips (whole episodes held out): Spearman of the ensemble's predicted clip return against the
    true clip return over both policies' clips, within each policy, and over the clips whose true
    return is not 0 (in Pong many 25-step clips hold no point, so their true returns tie at 0); and
    the share of held-out pairs with different true returns that the model orders right (what a
    perfect label says). Clips and results are cached under ``--out``.
(c) ``curve``: an RLHF run from perfect synthetic labels for ``--rlhf-frames`` and A2C on the true
    reward for the same frames and seed, as two ``rlhf-control sweep`` specs written into one output
    directory, both evaluated about ``--evals`` times at the same steps (a baseline evaluates every
    ``eval_every`` RLHF iterations' worth of steps, whatever its own rollout length);
    ``rlhf-control report`` draws the curves (RL dashed).

The paper's scale (Christiano et al. 2017, PAPER.md): A2C with 16 workers for about 10M steps per
game, labels 3.3k, 5.5k and 10k, a K80 GPU for the reward model; 500 pretraining labels and 200
reward epochs before RL. This script's defaults are far smaller (printed at the start), and stage
(c)'s labels, pretraining and reward epochs are cut so that it fits in about an hour on 2 CPU cores.

Usage::

    python scripts/atari_evidence.py --dry-run               # the plan, the commands, nothing run
    python scripts/atari_evidence.py --smoke --out /tmp/ae    # every stage at a tiny scale (2-3 minutes)
    python scripts/atari_evidence.py --stages policy quality  # (a) then (b), Pong
    python scripts/atari_evidence.py --game Breakout --stages curve
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_reward_quality, a sibling script
import bench_reward_quality as brq  # noqa: E402

from rlhf_control import rundir  # noqa: E402
from rlhf_control.config import RunConfig, resolve  # noqa: E402
from rlhf_control.errors import UserError  # noqa: E402
from rlhf_control.experiments.presets import ATARI_TASKS, execute_spec  # noqa: E402
from rlhf_control.experiments.sweep import SweepSpec, expand_grid, plan_sweep, spec_from_dict  # noqa: E402
from rlhf_control.loop.checkpoint import AGENT_FILE, latest_checkpoint  # noqa: E402

STAGES = ("policy", "quality", "curve")
GAMES = {t.split("/")[1].split("-")[0]: t for t in ATARI_TASKS}  # "Pong" -> "ALE/Pong-v5"
PAPER = ("the paper: A2C with 16 workers, about 10M steps per game; 3,300 / 5,500 / 10,000 synthetic labels; "
         "500 pretraining labels and 200 reward epochs before RL; the reward model on a K80 GPU")
DEFAULTS = {"frames": 4_000_000, "labels": [300, 1000, 3000], "clips": 2000, "rlhf_frames": 1_000_000,
            "rlhf_labels": 500, "rlhf_pretrain": 100, "rlhf_pretrain_epochs": 20, "rlhf_reward_epochs": 1}
SMOKE = {"frames": 640, "labels": [8, 16], "clips": 48, "rlhf_frames": 5120, "rlhf_labels": 12,
         "rlhf_pretrain": 6, "rlhf_pretrain_epochs": 1, "rlhf_reward_epochs": 1, "pretrain_epochs": 1,
         "rounds": 2, "eval_episodes": 0}
QUALITY_FILE = "reward_quality.json"
# Seconds per labelled pair and epoch of the 3-member CNN ensemble on one thread of this 2-core CPU
# (README, "Atari on a CPU": bench_reward.py, 2026-12-02, a loaded machine): the time estimates' unit.
CPU_PAIR_EPOCH_S = 0.087


def game_task(name: str) -> str:
    """The catalogue id of an Atari game given as ``Pong`` or ``ALE/Pong-v5``; else a one-line error."""
    if name in GAMES.values():
        return name
    for short, task in GAMES.items():
        if name.lower() == short.lower():
            return task
    raise UserError(f"unknown game {name!r}; allowed: {', '.join(GAMES)} (or their ids, e.g. {GAMES['Pong']})")


def agent_steps(frames: int, task: str, what: str) -> int:
    """Agent steps of ``frames`` emulator frames (the catalogue's frame skip: 4 frames a step)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise UserError(f"{what} {frames!r} must be a positive number of frames")
    per = resolve(RunConfig(task=task)).task.frames_per_step
    if frames < per:
        raise UserError(f"{what} {frames} is less than one agent step ({per} frames)")
    return frames // per


def _eval_every(steps: int, iteration_steps: int, evals: int) -> int:
    """Iterations between evaluations for about ``evals`` evaluations over ``steps`` agent steps."""
    return max(1, round(steps / max(evals, 1) / iteration_steps))


def _iteration_steps(task: str, steps: int) -> int:
    """Agent steps per RLHF iteration, the unit of ``eval_every`` for RLHF runs and baselines alike."""
    return resolve(RunConfig(task=task, steps=steps)).iteration_steps


# ----------------------------------------------------------------------------- the sweep specs
def policy_spec(task: str, frames: int, seed: int, evals: int, eval_episodes: int | None = None) -> SweepSpec:
    """(a): A2C on the true reward for ``frames``, baseline only, about ``evals`` evaluations."""
    steps = agent_steps(frames, task, "--frames")
    run: dict[str, Any] = {"steps": steps, "eval_every": _eval_every(steps, _iteration_steps(task, steps), evals)}
    if eval_episodes is not None:
        run["eval_episodes"] = eval_episodes
    return spec_from_dict({"sweep": {"tasks": [task], "seeds": [seed], "rlhf": False, "baseline": True},
                           "run": run}, where="atari_evidence (a)")


def curve_specs(task: str, frames: int, seed: int, labels: int, pretrain: int, pretrain_epochs: int,
                reward_epochs: int, evals: int, eval_episodes: int | None = None,
                reward_wait: bool = True) -> dict[str, SweepSpec]:
    """(c): ``{"a2c": ..., "rlhf": ...}``, the same task, agent steps, seed and evaluation episodes;
    both evaluate about every steps/``evals`` steps, at the same steps. ``reward_wait=False``: the RLHF
    run does not wait for each retraining (``--no-reward-wait``)."""
    steps = agent_steps(frames, task, "--rlhf-frames")
    for what, n in (("--rlhf-labels", labels), ("--rlhf-pretrain-epochs", pretrain_epochs),
                    ("--rlhf-reward-epochs", reward_epochs)):
        if n < 1:
            raise UserError(f"{what} {n} must be a positive integer")
    if not 0 <= pretrain <= labels:
        raise UserError(f"--rlhf-pretrain {pretrain} must be between 0 and --rlhf-labels {labels}")
    common: dict[str, Any] = {"steps": steps} | ({} if eval_episodes is None else {"eval_episodes": eval_episodes})
    common["eval_every"] = _eval_every(steps, _iteration_steps(task, steps), evals)
    rlhf_run = dict(common, pretrain_labels=pretrain, pretrain_epochs=pretrain_epochs, reward_epochs=reward_epochs)
    if not reward_wait:
        rlhf_run["reward_wait"] = False
    a2c_run = dict(common)
    sweep = {"tasks": [task], "seeds": [seed]}
    return {"a2c": spec_from_dict({"sweep": dict(sweep, rlhf=False), "run": a2c_run}, where="atari_evidence (c)"),
            "rlhf": spec_from_dict({"sweep": dict(sweep, baseline=False, labels=[labels], oracles=["perfect"],
                                              selectors=["variance"]), "run": rlhf_run}, where="atari_evidence (c)")}


def curve_reward_seconds(spec: SweepSpec) -> float:
    """Reward-training seconds of the RLHF run of ``spec`` on this CPU at ``CPU_PAIR_EPOCH_S``: its
    pretraining epochs, then each iteration that gets labels retrains over the window (the agent
    waits for it when it outlasts the rollout, as it does here)."""
    from rlhf_control.queries.schedule import make_schedule

    r = resolve(expand_grid(spec)[0].cfg)
    sched = make_schedule(r.schedule, r.labels, r.pretrain_labels, r.steps, r.schedule_horizon)
    asked, total = r.pretrain_labels, r.pretrain_labels * r.pretrain_epochs
    for step in range(r.iteration_steps, r.steps + r.iteration_steps, r.iteration_steps):
        if sched.target(step) > asked:
            asked = sched.target(step)
            total += min(asked, r.label_window) * r.reward_epochs
    return total * CPU_PAIR_EPOCH_S


def write_spec(spec: SweepSpec, path: Path, dry_run: bool = False) -> Path:
    """``spec`` as a TOML file for ``rlhf-control sweep`` (not written in a dry run)."""
    import tomli_w

    if dry_run:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(path, tomli_w.dumps(spec.to_toml_dict()))
    return path


def run_spec(spec: SweepSpec, out: Path, dry_run: bool) -> int:
    return execute_spec(spec, out, SimpleNamespace(dry_run=dry_run, backend="local", address=None, workers=1))


# ----------------------------------------------------------------------------- (a)
def policy_dir(spec: SweepSpec, out: Path) -> Path:
    return out / expand_grid(spec)[0].name


def trained_agent(spec: SweepSpec, out: Path) -> Path:
    """The finished (a) run's agent file; a one-line error when (a) has not finished."""
    run_dir = policy_dir(spec, out)
    status = plan_sweep(spec, out)[0][1]
    if status != "done":
        raise UserError(f"stage policy (a) has not finished in {str(run_dir)!r} (status {status}); "
                        "run --stages policy first")
    return latest_checkpoint(run_dir) / AGENT_FILE


def given_agent(path: Path) -> Path:
    """``--policy``'s agent file, checked: an SB3 .zip (a zip archive), else a one-line error."""
    import zipfile

    if not path.is_file() or not zipfile.is_zipfile(path):
        raise UserError(f"--policy {str(path)!r} is not an agent file; allowed: an SB3 agent .zip "
                        "(a run's checkpoints/ckpt-*/agent.zip)")
    return path


# ----------------------------------------------------------------------------- (b)
POLICIES = ("random", "trained")  # (b)'s clips: of these policies, in this order (it seeds their split)


def clip_file(cache: Path, policy: str, n_clips: int, seed: int) -> Path:
    """Where (b) keeps ``n_clips`` clips of ``policy`` recorded with ``seed``."""
    return cache / f"clips-{policy}-{n_clips}-s{seed}.npz"


def split_clips(clips: dict[str, list], seed: int) -> dict[str, tuple[list, list]]:
    """(b)'s ``(pool, held out)`` per policy of ``clips`` (a third of each policy's episodes held out)."""
    return {p: brq.split_by_episode(segs, 1 / 3, np.random.default_rng(seed + i)) for i, (p, segs)
            in enumerate(clips.items())}


def quality_clips(r: Any, agent_zip: Path, n_clips: int, seed: int, cache: Path) -> dict[str, list]:
    """Clips of the random and the trained policy, from ``cache`` when recorded before (the agent
    is copied there as ``trained.zip``, which ``brq.record_clips`` loads)."""
    cache.mkdir(parents=True, exist_ok=True)
    kept = cache / "trained.zip"
    if kept.exists() and kept.read_bytes() != Path(agent_zip).read_bytes():
        raise UserError(f"the clips cached in {str(cache)!r} were recorded with another trained policy than "
                        f"{str(agent_zip)!r}; remove that folder or give another --out")
    out = {}
    for i, policy in enumerate(POLICIES):
        path = clip_file(cache, policy, n_clips, seed)
        if not path.exists():
            if policy == "trained" and not (cache / "trained.zip").exists():
                shutil.copyfile(agent_zip, cache / "trained.zip")
            t0 = time.perf_counter()
            brq.save_clips(path, brq.record_clips(r, policy, cache, n_clips, 10_000 + 1_000 * i + seed))
            print(f"  recorded {n_clips} clips of the {policy} policy ({time.perf_counter() - t0:.0f} s)", flush=True)
        out[policy] = brq.load_clips(path)
    return out


def measure_quality(task: str, agent_zip: Path, args: Any, out: Path) -> list[dict[str, Any]]:
    """(b): each ``args.labels`` x ``args.seeds``, results appended to ``out/QUALITY_FILE`` as they come
    (a rerun skips the ones already there with the same settings)."""
    r = resolve(RunConfig(task=task, seed=args.seed, device=args.device, reward_l2=args.reward_l2))
    clips = quality_clips(r, agent_zip, args.clips, args.seed, out / "clips")
    split = split_clips(clips, args.seed)
    candidates = [s for p in split for s in split[p][0]]
    heldout = {p: split[p][1] for p in split}
    n_actions, act_shape = brq.action_shape(r.task)
    path = out / QUALITY_FILE
    done = json.loads(path.read_text())["results"] if path.exists() else []
    settings = {"clips": args.clips, "pretrain_epochs": args.pretrain_epochs, "reward_epochs": args.reward_epochs,
                "rounds": args.rounds, "selector": args.selector, "policy": str(agent_zip)}
    if not args.reward_l2:  # a key only when off, so that earlier results still match
        settings["reward_l2"] = False
    results = []
    for n in args.labels:
        pretrain = max(1, n // 6) if args.pretrain_labels is None else min(args.pretrain_labels, n)
        plan = brq.LabelPlan(n, pretrain, args.pretrain_epochs, args.reward_epochs, args.rounds, r.label_window)
        for seed in args.seeds:
            key = dict(settings, labels=n, seed=seed, pretrain_labels=pretrain)
            old = [x for x in done if x["settings"] == key]
            if old:
                results.append(old[0])
                continue
            print(f"  N {n}: {plan.pair_epochs():,} pair-epochs, about {plan.pair_epochs() * CPU_PAIR_EPOCH_S / 60:.0f} min "
                  f"at {CPU_PAIR_EPOCH_S} s each (one CPU thread; more on a loaded machine)", flush=True)
            ens, tconf = brq.build_reward(r.cfg.replace(seed=seed), r.task, candidates[0].obs_shape, act_shape,
                                          n_actions, args.device)
            t0 = time.perf_counter()
            window = brq.learn_reward(ens, tconf, plan, candidates, split["random"][0], args.selector, seed)
            res = {"settings": key, "seconds": time.perf_counter() - t0, "pair_epochs": plan.pair_epochs(),
                   **brq.clip_scores(ens, heldout), "label_mix": label_mix(window.labels)}
            results.append(res)
            done.append(res)
            ens.save(out / f"reward-N{n}-s{seed}.pt")  # to read the model again after the scores
            rundir.write_atomic(path, json.dumps({"task": task, "results": done}, indent=1) + "\n")
            print(f"  N {n}: {fmt_scores(res)}", flush=True)
    return results


def label_mix(labels: list) -> dict[str, int]:
    """What the labels compared, by the clips' true returns: ``labels``, ``ties`` (equal returns),
    ``with_gain`` (a clip with a positive return in the pair), ``with_loss`` (one with a negative one)."""
    pairs = [(lb.pair.first.true_return, lb.pair.second.true_return) for lb in labels]
    return {"labels": len(pairs), "ties": sum(a == b for a, b in pairs),
            "with_gain": sum(max(a, b) > 0 for a, b in pairs), "with_loss": sum(min(a, b) < 0 for a, b in pairs)}


def ceiling_note(c: dict[str, float] | None) -> str:
    return f" (ceiling with ties broken: all {c['all']:.3f}, non-zero {c['nonzero']:.3f})" if c else ""


def fmt_scores(res: dict[str, Any]) -> str:
    s, nz, h = res["spearman"], res["nonzero"], res["heldout"]
    return (f"Spearman all {s['all']:.3f}, random {s['random']:.3f}, trained {s['trained']:.3f}, non-zero clips "
            f"{s['nonzero']:.3f}{ceiling_note(res.get('spearman_ceiling'))}; pair accuracy {res['pair_accuracy']:.3f}; held out "
            + ", ".join(f"{p} {nz[p]}/{h[p]} non-zero" for p in h) + f" ({res['seconds']:.0f} s)"
            + ("; labels: {ties} ties, {with_gain} with a positive clip return, {with_loss} with a negative one, of {labels}"
               .format(**res["label_mix"]) if "label_mix" in res else ""))


# ----------------------------------------------------------------------------- main
def positive(text: str) -> int:
    """An argparse type: a positive integer (``4_000_000`` and ``4e6`` allowed), else a one-line error."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = 0.0
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(value)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Stages: (a) policy, (b) quality, (c) curve; see the module docstring.")
    p.add_argument("--game", default="Pong", help=f"one of {', '.join(GAMES)} (default Pong)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="which stages to run")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/atari-evidence/<game>; -smoke for --smoke)")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs and of the recorded clips")
    p.add_argument("--device", default="cpu", help="torch device of the reward model in (b): cpu, cuda")
    p.add_argument("--threads", type=positive, default=1, help="torch threads of this process in (b) (default 1)")
    p.add_argument("--evals", type=positive, default=10, help="evaluations over each run of (a) and (c)")
    p.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default the game's)")
    g = p.add_argument_group("(a) A2C on the true reward")
    g.add_argument("--frames", type=positive, default=None, help=f"emulator frames (default {DEFAULTS['frames']:,})")
    g = p.add_argument_group("(b) reward-model quality")
    g.add_argument("--policy", type=Path, default=None,
                   help="the trained policy's agent file (an SB3 .zip) instead of (a)'s last checkpoint")
    g.add_argument("--labels", type=positive, nargs="+", default=None, help=f"label counts N (default {DEFAULTS['labels']})")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="label and ensemble seeds per N (default 0)")
    g.add_argument("--clips", type=positive, default=None, help=f"clips per policy (default {DEFAULTS['clips']})")
    g.add_argument("--pretrain-labels", type=int, default=None,
                   help="labels on random-policy clips first (default N // 6: the paper's 500 at 3,000)")
    g.add_argument("--pretrain-epochs", type=positive, default=20, help="epochs after them (default 20; paper 200)")
    g.add_argument("--reward-epochs", type=positive, default=3, help="epochs after each round (default 3)")
    g.add_argument("--rounds", type=positive, default=10, help="rounds of selected labels (default 10)")
    g.add_argument("--selector", default="random", choices=brq.SELECTORS, help="how pairs are chosen (default random)")
    g.add_argument("--no-reward-l2", dest="reward_l2", action="store_false",
                   help="no L2 on the reward members (the ablation's; default: the adaptive L2)")
    g = p.add_argument_group("(c) RLHF against A2C on the true reward")
    g.add_argument("--rlhf-frames", type=positive, default=None,
                   help=f"emulator frames of both runs (default {DEFAULTS['rlhf_frames']:,})")
    g.add_argument("--rlhf-labels", type=positive, default=None, help=f"label budget (default {DEFAULTS['rlhf_labels']})")
    g.add_argument("--rlhf-pretrain", type=int, default=None,
                   help=f"pretraining labels (default {DEFAULTS['rlhf_pretrain']}; paper 500)")
    g.add_argument("--rlhf-pretrain-epochs", type=positive, default=None,
                   help=f"reward epochs after pretraining (default {DEFAULTS['rlhf_pretrain_epochs']}; paper 200)")
    g.add_argument("--rlhf-reward-epochs", type=positive, default=None,
                   help=f"epochs per retraining (default {DEFAULTS['rlhf_reward_epochs']}; catalogue 3)")
    g.add_argument("--rlhf-no-wait", dest="rlhf_wait", action="store_false",
                   help="the RLHF run does not wait for each retraining (--no-reward-wait): the reward trains "
                        "beside the agent, on the other core; the run no longer repeats to the digit")
    p.add_argument("--smoke", action="store_true", help="every stage at a tiny scale (2-3 minutes here)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    args = p.parse_args(argv)
    base = dict(DEFAULTS, **(SMOKE if args.smoke else {}))
    for key in ("frames", "labels", "clips", "rlhf_frames", "rlhf_labels", "rlhf_pretrain", "rlhf_pretrain_epochs",
                "rlhf_reward_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.smoke:
        args.pretrain_epochs, args.rounds = SMOKE["pretrain_epochs"], SMOKE["rounds"]
        args.eval_episodes = SMOKE["eval_episodes"] if args.eval_episodes is None else args.eval_episodes
    try:
        args.task = game_task(args.game)
    except UserError as exc:
        p.error(str(exc))
    if args.eval_episodes is not None and args.eval_episodes < 0:
        p.error(f"--eval-episodes {args.eval_episodes} must be 0 or more")
    if args.pretrain_labels is not None and args.pretrain_labels < 0:
        p.error(f"--pretrain-labels {args.pretrain_labels} must be 0 or more")
    if args.out is None:
        args.out = Path("runs/atari-evidence" + ("-smoke" if args.smoke else "")) / args.task.split("/")[1].split("-")[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    out, task = args.out, args.task
    me = ("python scripts/atari_evidence.py" + (f" --game {args.game}" if args.game != "Pong" else "")
          + (f" --seed {args.seed}" if args.seed else "") + (f" --evals {args.evals}" if args.evals != 10 else "")
          + ("" if args.eval_episodes is None else f" --eval-episodes {args.eval_episodes}"))
    try:
        pspec = policy_spec(task, args.frames, args.seed, args.evals, args.eval_episodes)
        cspecs = curve_specs(task, args.rlhf_frames, args.seed, args.rlhf_labels, args.rlhf_pretrain,
                             args.rlhf_pretrain_epochs, args.rlhf_reward_epochs, args.evals, args.eval_episodes,
                             args.rlhf_wait)
        files = {k: write_spec(spec, out / folder / f"{k.replace('policy', 'a2c')}.toml", args.dry_run)
                 for k, folder, spec in (("policy", "policy", pspec), ("a2c", "curve", cspecs["a2c"]),
                                         ("rlhf", "curve", cspecs["rlhf"]))}
        print(f"atari_evidence: {task}, seed {args.seed}{' (smoke: a tiny scale)' if args.smoke else ''}")
        print(f"  scale of {PAPER}")
        print(f"  this run: (a) A2C on the true reward for {args.frames:,} frames; (b) N = {args.labels} perfect "
              f"labels, {args.clips} clips per policy, {args.pretrain_epochs} pretraining and {args.reward_epochs} "
              f"reward epochs, {args.rounds} rounds, {len(args.seeds)} seed(s); (c) RLHF and A2C for "
              f"{args.rlhf_frames:,} frames, {args.rlhf_labels} labels ({args.rlhf_pretrain} pretraining, "
              f"{args.rlhf_pretrain_epochs} pretraining epochs, {args.rlhf_reward_epochs} per retraining"
              f"{'' if args.rlhf_wait else ', not waited for'})")
        beside = ("before the agent's own time" if args.rlhf_wait else
                  "its pretraining before the agent starts, the rest beside the agent, which does not wait for it")
        print(f"  (c)'s reward training alone: about {curve_reward_seconds(cspecs['rlhf']) / 60:.0f} min on one CPU "
              f"thread here, at {CPU_PAIR_EPOCH_S} s per pair-epoch (README), {beside}")
        for stage in args.stages:
            print(f"\n== ({'abc'[STAGES.index(stage)]}) {stage}", flush=True)
            if stage == "policy":
                rc = run_spec(pspec, out / "policy", args.dry_run)
                if rc:
                    return rc
            elif stage == "quality":
                if args.dry_run:
                    print(f"  would measure N = {args.labels} into {out / QUALITY_FILE} (needs (a) finished)")
                    continue
                agent = given_agent(args.policy) if args.policy else trained_agent(pspec, out / "policy")
                results = measure_quality(task, agent, args, out)
                print("  Spearman of the predicted against the true clip return on held-out clips (whole episodes "
                      "held out); 'non-zero clips': only clips whose true return is not 0")
                for res in results:
                    print(f"  N {res['settings']['labels']} seed {res['settings']['seed']}: {fmt_scores(res)}")
            else:
                for kind in ("a2c", "rlhf"):
                    rc = run_spec(cspecs[kind], out / "curve", args.dry_run)
                    if rc:
                        return rc
    except UserError as exc:
        print(f"atari_evidence.py: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print("\nCommands (each resumes or skips what is done):")
    print(f"  (a)   {me} --stages policy --frames {args.frames} --out {out}"
          f"\n        (= rlhf-control sweep {files['policy']} --out {out / 'policy'} --workers 1)")
    b_flags = (f"--labels {' '.join(map(str, args.labels))} --seeds {' '.join(map(str, args.seeds))} --clips {args.clips} "
               f"--pretrain-epochs {args.pretrain_epochs} --reward-epochs {args.reward_epochs} --rounds {args.rounds} "
               f"--selector {args.selector} --device {args.device}" + ("" if args.reward_l2 else " --no-reward-l2")
               + ("" if args.pretrain_labels is None else f" --pretrain-labels {args.pretrain_labels}")
               + ("" if args.policy is None else f" --policy {args.policy}"))
    print(f"  (b)   {me} --stages quality --frames {args.frames} {b_flags} --out {out}")
    print(f"  (c)   rlhf-control sweep {files['a2c']} --out {out / 'curve'} --workers 1"
          f"\n        rlhf-control sweep {files['rlhf']} --out {out / 'curve'} --workers 1"
          f"\n        rlhf-control report {out / 'curve'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
