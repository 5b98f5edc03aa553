"""Reward-model quality without RL: how well a reward learned from N perfect labels ranks clips.

For each task, a fixed set of policies makes the clips: uniformly random actions ("random"), and
the task's own agent trained on the env reward for ``--policy-steps`` steps (the task's
hyperparameters, ``VecNormalize`` on the reward as the RL-on-true-reward baseline does), kept at
half its steps ("half") and at the end ("trained"). Each policy's clips (stochastic actions, the
task's clip length, recorded by ``TrajectoryRecorder`` with the true reward the synthetic oracle
compares) are split by episode into candidates and held-out clips.

Labels mimic the loop: the task's pretraining share of N as random pairs of random-policy clips,
the task's pretraining epochs, then ``--rounds`` rounds that each pick the next labels with the
selector from all candidates using the current ensemble and retrain for the task's reward epochs,
until N labels. The oracle is ``perfect``; the ensemble, fitter and trainer settings are the
task's and ``RunConfig``'s defaults, built as ``loop/build.py`` builds them. The score is the
Spearman rank correlation of the ensemble's mean (normalised) predicted clip return with the true
clip return on the held-out clips: over all policies ("all") and within each policy (what matters
late in a run, when the agent's clips all come from one behaviour); mean +- std over ``--seeds``.

Agents and clips are cached under ``--cache`` (keyed by task, steps, policy seed and clip count),
so reruns, and runs of another checkout of the package (``PYTHONPATH=...``), reuse the same clips
and measure only the reward learning.

Usage::

    python scripts/bench_reward_quality.py                            # Pendulum-v1, HalfCheetah-v5; N 100 300 700
    python scripts/bench_reward_quality.py --tasks Pendulum-v1 --selectors random variance --seeds 0
    python scripts/bench_reward_quality.py --out rq.json --cache /tmp/rq-cache
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from stable_baselines3.common.vec_env import VecNormalize

import rlhf_control
from rlhf_control.agent.factory import load_obs_normalization, make_agent, save_obs_normalization
from rlhf_control.config import RunConfig, resolve
from rlhf_control.oracles import make_oracle
from rlhf_control.queries.selection import make_selector
from rlhf_control.recording.pool import SegmentPool
from rlhf_control.recording.recorder import TrajectoryRecorder
from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.fitting import make_fitter, retrain
from rlhf_control.reward.training import RewardTrainerConfig
from rlhf_control.rundir import atomic_path
from rlhf_control.tasks.spec import algo_class
from rlhf_control.types import Label, Query, Segment, StackedFrames, segment_steps

POLICY_STEPS = {"Pendulum-v1": 100_000, "HalfCheetah-v5": 150_000}
POLICIES = ("random", "half", "trained")
SELECTORS = ("random", "variance", "entropy", "predictive-entropy", "kcenter-variance")
NORM_CLIPS = 512  # clips that set the output normalisation after each retraining (the loop's count)
RECORD_ENVS = 8


# ----------------------------------------------------------------------------- reward learning
@dataclass(frozen=True)
class LabelPlan:
    """How N labels are gathered and learned from: ``pretrain`` random pairs of pretraining clips and
    ``pretrain_epochs`` epochs, then ``rounds`` rounds of selected labels with ``reward_epochs`` each."""

    labels: int
    pretrain: int
    pretrain_epochs: int
    reward_epochs: int
    rounds: int
    label_window: int = 3000

    def round_sizes(self) -> list[int]:
        """Labels per online round, summing to ``labels - pretrain`` (empty rounds dropped)."""
        edges = np.round(np.linspace(self.pretrain, self.labels, self.rounds + 1)).astype(int)
        return [int(k) for k in np.diff(edges) if k > 0]

    def pair_epochs(self) -> int:
        """Labelled pairs x epochs trained on (what the plan's time on a CPU is proportional to)."""
        total, seen = self.pretrain * max(1, self.pretrain_epochs), self.pretrain
        for k in self.round_sizes():
            seen += k
            total += min(seen, self.label_window) * self.reward_epochs
        return total


def learn_reward(ensemble: RewardEnsemble, trainer_config: RewardTrainerConfig, plan: LabelPlan,
                 candidates: Sequence[Segment], pretrain_clips: Sequence[Segment], selector: str,
                 seed: int) -> PreferenceDataset:
    """Label pairs with the perfect oracle as ``plan`` says and fit ``ensemble`` to them (in place).

    Pretraining pairs are random pairs of ``pretrain_clips``; online pairs come from ``candidates``
    through the named selector. After each fit the output is normalised on ``NORM_CLIPS`` random
    candidates. Returns the label window.
    """
    rng = np.random.default_rng(seed)
    oracle = make_oracle("perfect", seed)
    fitter = make_fitter("comparisons", ensemble, trainer_config, np.random.default_rng(seed + 1))
    dataset = PreferenceDataset(max_size=plan.label_window)
    norm = [candidates[i] for i in rng.choice(len(candidates), min(NORM_CLIPS, len(candidates)), replace=False)]
    next_id = 1

    def ask(pairs: list) -> None:
        nonlocal next_id
        queries = [Query(next_id + i, pair) for i, pair in enumerate(pairs)]
        next_id += len(queries)
        oracle.submit(queries)
        by_id = {q.query_id: q.pair for q in queries}
        for answer in oracle.collect():
            if answer.label is not None:
                dataset.add(Label(by_id[answer.query_id], answer.label), seq=answer.query_id)

    def fit(epochs: int) -> None:
        if len(dataset) == 0:
            return
        if ensemble.uses_input_norm and not ensemble.input_stats_set:
            # As the loop's updater: fixed once, from the first labelled clips.
            segs = [s for lb in dataset.labels for s in (lb.pair.first, lb.pair.second)]
            ensemble.set_input_stats(segment_steps(segs)[0])
        retrain(fitter, dataset, epochs, norm)

    if plan.pretrain > 0:
        ask(make_selector("random").select(list(pretrain_clips), plan.pretrain, None, rng))
        fit(max(1, plan.pretrain_epochs))
    chooser = make_selector(selector)
    for n in plan.round_sizes():
        ask(chooser.select(list(candidates), n, ensemble, rng))
        fit(plan.reward_epochs)
    return dataset


def rank_scores(ensemble: RewardEnsemble, heldout: dict[str, Sequence[Segment]]) -> dict[str, float]:
    """Spearman of the ensemble's mean normalised clip return against the true clip return, per
    group of ``heldout`` and over all of them (key ``"all"``)."""
    preds, trues = {}, {}
    for name, segs in heldout.items():
        preds[name] = ensemble.member_segment_returns(list(segs), normalized=True).mean(axis=0)
        trues[name] = np.array([s.true_return for s in segs])
    preds["all"] = np.concatenate([preds[k] for k in heldout])
    trues["all"] = np.concatenate([trues[k] for k in heldout])
    return {k: float(spearmanr(preds[k], trues[k]).statistic) for k in ["all", *heldout]}


def action_shape(task: Any) -> tuple[int | None, tuple[int, ...]]:
    """``(n_actions, act_shape)`` of ``task``'s action space: ``(n, ())`` discrete, ``(None, shape)`` else."""
    probe = task.make_env(0)
    space = probe.action_space
    probe.close()
    n_actions = int(space.n) if hasattr(space, "n") else None
    return n_actions, (() if n_actions is not None else tuple(space.shape))


def build_reward(cfg: RunConfig, task: Any, obs_shape: tuple[int, ...], act_shape: tuple[int, ...],
                 n_actions: int | None, device: str) -> tuple[RewardEnsemble, RewardTrainerConfig]:
    """The ensemble and trainer settings a run of ``cfg`` on ``task`` builds (seeded by ``cfg.seed``)."""
    econf = EnsembleConfig(n_members=cfg.reward_members, net=task.reward_net, target_std=task.reward_std,
                           **dict(task.reward_net_kwargs))
    ens = RewardEnsemble(econf, obs_shape, act_shape, n_actions=n_actions, device=device, seed=cfg.seed)
    tconf = RewardTrainerConfig(lr=cfg.reward_lr, noise=cfg.reward_noise, adaptive_l2=cfg.reward_l2,
                                **({} if cfg.reward_l2 else {"l2_init": 0.0}), seed=cfg.seed)
    return ens, tconf


def clip_scores(ensemble: Any, heldout: dict[str, list]) -> dict[str, Any]:
    """Scores of ``ensemble`` (``member_segment_returns``) on held-out clips per policy: ``spearman``
    (:func:`rank_scores`: over all clips, within each policy) plus ``spearman["nonzero"]`` over the
    clips of all policies whose true return is not 0, ``nonzero`` (how many there are per policy),
    ``pair_accuracy`` (share of pairs of held-out clips, over all policies, with different true
    returns that the predicted returns order the same way), ``pair_accuracy_by`` (the same over the pairs
    in which one clip's true return is 0, and over those in which neither is), ``spearman_ceiling``
    (:func:`tie_ceiling` of each group). NaN where undefined (one value only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant group's Spearman is NaN, and says so
        spear = rank_scores(ensemble, heldout)
        segs = [s for p in heldout for s in heldout[p]]
        pred = ensemble.member_segment_returns(segs, normalized=True).mean(axis=0)
        true = np.array([s.true_return for s in segs])
        nz = true != 0
        spear["nonzero"] = float(spearmanr(pred[nz], true[nz]).statistic) if nz.sum() > 1 else float("nan")
    dt, dp = np.subtract.outer(true, true), np.subtract.outer(pred, pred)
    differ = np.triu(dt != 0, 1)
    right = np.sign(dt) == np.sign(dp)
    acc = float(right[differ].mean()) if differ.any() else float("nan")
    zero = np.logical_or.outer(~nz, ~nz)  # at least one clip of the pair has a true return of 0
    kinds = {"one_zero": differ & zero, "both_nonzero": differ & ~zero}
    groups = {p: np.array([s.true_return for s in v]) for p, v in heldout.items()}
    groups.update({"all": true, "nonzero": true[nz]})
    by_kind = {k: float(right[m].mean()) if m.any() else np.nan for k, m in kinds.items()}
    return {"spearman": spear, "spearman_ceiling": {k: tie_ceiling(v) for k, v in groups.items()},
            "pair_accuracy": acc, "pair_accuracy_by": by_kind, "heldout": {p: len(v) for p, v in heldout.items()},
            "nonzero": {p: int(sum(s.true_return != 0 for s in v)) for p, v in heldout.items()}}


def tie_ceiling(true: np.ndarray) -> float:
    """Spearman with ``true`` of a predictor that orders all pairs of different true returns right and ties
    none (below 1 where true returns tie, as most Pong clips at 0; how ties break does not change it)."""
    return float(spearmanr(true, rankdata(true, method="ordinal")).statistic) if len(set(true)) > 1 else np.nan


# ----------------------------------------------------------------------------- policies and clips
def train_policies(r: Any, steps: int, seed: int, folder: Path) -> None:
    """Train the task's agent on the env reward; save it at half ``steps`` and at the end."""
    task = r.task
    env = VecNormalize(task.make_vec_env(r.n_envs, seed=seed), norm_obs=task.normalize, norm_reward=True,
                       gamma=float(r.agent_params.get("gamma", 0.99)))
    agent = make_agent(r.algo, env, r.agent_params, seed=seed, device="cpu", policy=task.policy)
    half = steps // 2
    for name, n in (("half", half), ("trained", steps - half)):
        t0 = time.perf_counter()
        agent.learn(total_timesteps=n, reset_num_timesteps=name == "half")
        print(f"  trained {name}: {agent.num_timesteps} steps ({time.perf_counter() - t0:.0f} s)", flush=True)
        if task.normalize:
            with atomic_path(folder / f"{name}_obs_norm.npz") as tmp:
                save_obs_normalization(env, tmp)
        with atomic_path(folder / f"{name}.zip") as tmp, open(tmp, "wb") as f:
            agent.save(f)
    env.close()


def record_clips(r: Any, policy: str, folder: Path, n_clips: int, seed: int) -> list[Segment]:
    """``n_clips`` clips of ``policy`` (stochastic actions), recorded as the loop records them."""
    task = r.task
    pool = SegmentPool(capacity=n_clips + RECORD_ENVS, rng=np.random.default_rng(seed))
    venv = task.make_vec_env(RECORD_ENVS, seed=seed)
    env = rec = TrajectoryRecorder(venv, task.clip_length, pool, obs_fn=task.reward_obs_fn)
    agent = None
    if policy != "random":
        agent = algo_class(r.algo).load(folder / f"{policy}.zip", device="cpu")
        agent.set_random_seed(seed)
        if task.normalize:
            env = VecNormalize(rec, norm_obs=True, norm_reward=False, training=False)
            load_obs_normalization(env, folder / f"{policy}_obs_norm.npz")
    space = env.action_space
    space.seed(seed)
    obs = env.reset()
    sde_every = max(1, getattr(agent, "sde_sample_freq", 0)) if getattr(agent, "use_sde", False) else 0
    step = 0
    while pool.next_uid < n_clips:
        if agent is None:
            acts = np.stack([space.sample() for _ in range(env.num_envs)])
        else:
            if sde_every and step % sde_every == 0:
                agent.policy.reset_noise(env.num_envs)  # gSDE's exploration, resampled as in training
            acts = agent.predict(obs, deterministic=False)[0]
        obs = env.step(acts)[0]
        step += 1
    env.close()
    return pool.segments()[:n_clips]


def save_clips(path: Path, segs: list[Segment]) -> None:
    """Clips as npz; stacked image frames (Atari) as their single frames, each stored once."""
    if isinstance(segs[0].obs, StackedFrames):
        obs = {"frames": np.stack([np.asarray(s.obs.frames) for s in segs]), "k": np.array(segs[0].obs.k)}
    else:
        obs = {"obs": np.stack([s.obs_array() for s in segs])}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **obs, acts=np.stack([s.acts for s in segs]), rewards=np.stack([s.true_rewards for s in segs]),
                 episode=np.array([s.episode_id for s in segs]), start=np.array([s.start_step for s in segs]))


def load_clips(path: Path) -> list[Segment]:
    with np.load(path, allow_pickle=False) as d:
        k = int(d["k"]) if "frames" in d else 0
        obs = [StackedFrames(o, k) for o in d["frames"]] if k else d["obs"]
        return [Segment(o, a, true_rewards=w, episode_id=int(e), start_step=int(s), uid=i)
                for i, (o, a, w, e, s) in enumerate(zip(obs, d["acts"], d["rewards"], d["episode"],
                                                        d["start"], strict=True))]


def policy_clips(r: Any, steps: int, policy_seed: int, n_clips: int, cache: Path) -> dict[str, list[Segment]]:
    """Each policy's clips, from ``cache`` when there, else trained and recorded into it."""
    folder = cache / f"{r.task.name.replace('/', '_')}-{r.algo}-{steps}-s{policy_seed}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "trained.zip").exists():
        print(f"  training {r.algo} on the env reward for {steps} steps (cached in {folder})", flush=True)
        train_policies(r, steps, policy_seed, folder)
    out = {}
    for i, policy in enumerate(POLICIES):
        path = folder / f"clips-{policy}-{n_clips}.npz"
        if not path.exists():
            save_clips(path, record_clips(r, policy, folder, n_clips, 10_000 + 1_000 * i + policy_seed))
        out[policy] = load_clips(path)
    return out


def split_by_episode(segs: list[Segment], heldout: float, rng: np.random.Generator) -> tuple[list, list]:
    """(candidates, held-out): whole episodes go to one side, about ``heldout`` of them held out."""
    episodes = np.unique([s.episode_id for s in segs])
    out = set(rng.choice(episodes, max(1, round(heldout * len(episodes))), replace=False).tolist())
    return [s for s in segs if s.episode_id not in out], [s for s in segs if s.episode_id in out]


# ----------------------------------------------------------------------------- the benchmark
def bench_task(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    r = resolve(RunConfig(task=name, seed=args.policy_seed, torch_threads=1, device="cpu"))
    task = r.task
    if task.frame_stack or not task.has_true_reward:
        raise SystemExit(f"{name}: this benchmark takes tasks with vector observations and a true reward")
    steps = args.policy_steps or POLICY_STEPS.get(name, r.steps)
    t0 = time.perf_counter()
    clips = policy_clips(r, steps, args.policy_seed, args.clips, args.cache)
    split = {p: split_by_episode(segs, args.heldout, np.random.default_rng(args.policy_seed + i))
             for i, (p, segs) in enumerate(clips.items())}
    candidates = [s for p in POLICIES for s in split[p][0]]
    heldout = {p: split[p][1] for p in POLICIES}
    print(f"\n=== {name}: {r.algo.upper()} {steps} steps (half at {steps // 2}), clip length {task.clip_length}, "
          f"{args.clips} clips per policy ({time.perf_counter() - t0:.0f} s to get them)")
    for p in POLICIES:
        ret = np.array([s.true_return for s in clips[p]])
        print(f"  {p:8s} clip return {ret.mean():9.2f} +- {ret.std():7.2f}; {len(split[p][0])} candidates, "
              f"{len(split[p][1])} held out")
    n_actions, act_shape = action_shape(task)
    obs_shape = clips["random"][0].obs_shape
    results = []
    for n_labels in args.labels:
        rn = resolve(RunConfig(task=name, labels=n_labels, seed=args.policy_seed))
        plan = LabelPlan(n_labels, rn.pretrain_labels, rn.pretrain_epochs, rn.reward_epochs, args.rounds,
                         rn.label_window)
        for selector in args.selectors:
            for seed in args.seeds:
                ens, tconf = build_reward(rn.cfg.replace(seed=seed), task, obs_shape, act_shape, n_actions, "cpu")
                t1 = time.perf_counter()
                ds = learn_reward(ens, tconf, plan, candidates, split["random"][0], selector, seed)
                scores = rank_scores(ens, heldout)
                res = {"task": name, "selector": selector, "labels": n_labels, "seed": seed,
                       "labels_learned": len(ds), "pretrain_labels": plan.pretrain, "spearman": scores,
                       "seconds": time.perf_counter() - t1}
                results.append(res)
                print(f"  N {n_labels:4d} {selector:16s} seed {seed}: Spearman all {scores['all']:.3f}, "
                      + ", ".join(f"{p} {scores[p]:.3f}" for p in POLICIES) + f"  ({res['seconds']:.0f} s)",
                      flush=True)
    print(f"  {name}: {time.perf_counter() - t0:.0f} s in all")
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    cols = ["all", *POLICIES]
    print("\nSpearman of learned vs true clip return on held-out clips, mean +- std over seeds")
    print("| task | N | selector | seeds | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    keys = list(dict.fromkeys((r["task"], r["labels"], r["selector"]) for r in results))
    for task, n, sel in keys:
        rs = [r for r in results if (r["task"], r["labels"], r["selector"]) == (task, n, sel)]
        cells = []
        for c in cols:
            v = np.array([r["spearman"][c] for r in rs])
            cells.append(f"{v.mean():.3f} +- {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        print(f"| {task} | {n} | {sel} | {len(rs)} | " + " | ".join(cells) + " |")


def package_version() -> dict[str, str]:
    """Where ``rlhf_control`` was imported from and that checkout's commit (for before/after runs)."""
    root = Path(rlhf_control.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "rlhf_control"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (package modified)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"package": str(root), "commit": commit}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(POLICY_STEPS), help="catalogue task names")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 300, 700], help="label budgets N")
    p.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=SELECTORS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label and ensemble seeds")
    p.add_argument("--rounds", type=int, default=20, help="online rounds of selection and retraining")
    p.add_argument("--clips", type=int, default=3000, help="clips per policy (candidates + held out)")
    p.add_argument("--heldout", type=float, default=1 / 3, help="share of each policy's episodes held out")
    p.add_argument("--policy-steps", type=int, default=None,
                   help=f"agent steps of the trained policy (default: {POLICY_STEPS}, else the task's)")
    p.add_argument("--policy-seed", type=int, default=0, help="seed of the policies and their clips")
    p.add_argument("--cache", type=Path, default=Path("/tmp/bench_reward_quality-cache"),
                   help="folder for the trained agents and recorded clips")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.clips < 20 or not 0 < args.heldout < 1 or min(args.labels) < 2:
        p.error("need --rounds >= 1, --clips >= 20, 0 < --heldout < 1 and every --labels >= 2")
    torch.set_num_threads(1)
    version = package_version()
    print(f"bench_reward_quality: rlhf_control from {version['package']} at {version['commit']}; tasks {args.tasks}, "
          f"N {args.labels}, selectors {args.selectors}, seeds {args.seeds}, {args.rounds} rounds", flush=True)
    t0 = time.perf_counter()
    results = []
    for name in args.tasks:
        results += bench_task(name, args)
        if args.out is not None:
            doc = {"version": version, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "results": results}
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(results)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
