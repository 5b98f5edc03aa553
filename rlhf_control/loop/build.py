"""The parts of an RLHF run, built from a resolved config: env, recorder, pool, ensemble, fitter,
updater, agent, store, oracle and, for a person's oracle, the label server.

Everything a user can get wrong (names, a task without a true reward for a synthetic oracle, a
damaged checkpoint) is checked before the run directory is touched; only then is the store created
(or opened, on resume) and the resolved config written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlhf_control import __version__
from rlhf_control.agent.factory import load_agent, load_obs_normalization, make_agent
from rlhf_control.agent.learned_reward import LearnedReward, ReturnScale
from rlhf_control.agent.replay import REPLAY_FILE, load_replay
from rlhf_control.config import (
    Resolved,
    RunConfig,
    resolve,
    resolve_device,
    run_config_to_dict,
    write_config_file,
)
from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import (
    AGENT_FILE,
    ENSEMBLE_FILE,
    FITTER_FILE,
    OBS_NORM_FILE,
    load_run_checkpoint,
)
from rlhf_control.oracles import OracleContext, check_spec
from rlhf_control.queries.schedule import LabelSchedule, ShiftedSchedule, make_schedule
from rlhf_control.queries.selection import QuerySelector, make_selector
from rlhf_control.recording.frame_ring import FrameRing
from rlhf_control.recording.pool import SegmentPool
from rlhf_control.recording.recorder import TrajectoryRecorder
from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.fitting import FITTERS, RewardFitter, make_fitter
from rlhf_control.reward.frame_file import FrameFile
from rlhf_control.reward.training import RewardTrainerConfig
from rlhf_control.reward.updater import RewardUpdater
from rlhf_control.rundir import (
    CLIPS_DIR,
    CONFIG_FILE,
    FRAMES_FILE,
    LOCK_FILE,
    POOL_FRAMES_FILE,
    STORE_FILE,
    RunLock,
    read_config_doc,
)
from rlhf_control.store.store import PreferenceStore
from rlhf_control.tasks.spec import OFF_POLICY, TaskSpec
from rlhf_control.types import Segment

# How many clips set the reward's output normalisation after each retraining (RunConfig.reward_norm).
NORM_CLIPS = 512
POOL_CLIPS = 2000  # the segment pool's capacity, unless pretraining or the query window needs more


@dataclass
class RunParts:
    """What the loop works with; ``checkpoint`` is the verified state of the checkpoint a resumed run
    continues from (None for a new run, or one killed before its first checkpoint)."""

    r: Resolved
    device: str
    rng: np.random.Generator
    schedule: LabelSchedule
    selector: QuerySelector
    pool: SegmentPool
    recorder: TrajectoryRecorder
    learned: LearnedReward
    agent_env: VecEnv
    ensemble: RewardEnsemble
    fitter: RewardFitter
    dataset: PreferenceDataset
    updater: RewardUpdater
    agent: Any
    store: PreferenceStore
    oracle: Any
    label_server: Any
    checkpoint: dict[str, Any] | None
    lock: RunLock


ORACLE_STREAM = 0x0AC1E  # spawn key of the oracle's random stream (B-Pref's noisy teachers draw from it)


def build_run(cfg: RunConfig, run_dir: Path, resume: bool = False, task: TaskSpec | None = None,
              label_token: str | None = None) -> RunParts:
    """Check everything, then build every part of the run in ``run_dir`` (see the module docstring),
    holding the run directory's lock. If a new run fails after its files were created (a label port in
    use), they are removed again, so that the same command can be retried; a resumed run's are kept."""
    run_dir = Path(run_dir)
    held: list[Any] = []  # the lock, then the store: closed if the build fails
    try:
        return _build_run(cfg, run_dir, resume, task, label_token, held)
    except BaseException:
        for thing in reversed(held):
            thing.close()
        if not resume and held:
            for name in (CONFIG_FILE, STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", LOCK_FILE):
                (run_dir / name).unlink(missing_ok=True)
        raise


def _build_run(cfg: RunConfig, run_dir: Path, resume: bool, task: TaskSpec | None, label_token: str | None,
               held: list[Any]) -> RunParts:
    r = resolve(cfg, task)
    cfg, task = r.cfg, r.task
    if cfg.reward_obs == "after" and task.frame_stack:
        raise UserError(f"reward-obs after is not supported for frame-stacked task {task.name!r} (Atari); "
                        "use before")
    device = resolve_device(cfg.device)
    # The paper's networks are tiny: one thread per process beats several on a CPU.
    torch.set_num_threads(cfg.torch_threads)
    oracle_factory, oracle_terms = check_spec(cfg.oracle)
    FITTERS.get(cfg.reward_fitter)
    if not task.has_true_reward and oracle_factory.needs_true_reward:
        raise UserError(f"task {task.name!r} has no true reward; only the human oracle can label it "
                         f"(got oracle {cfg.oracle!r})")
    rng = np.random.default_rng(cfg.seed)
    schedule = make_schedule(r.schedule, r.labels, r.pretrain_labels, r.steps - r.rl_start, r.schedule_horizon,
                             batch=cfg.label_batch, interval=r.iteration_steps)
    if r.rl_start:  # off-policy: the first labels come after the random and unsupervised steps
        schedule = ShiftedSchedule(schedule, r.rl_start)
    selector = make_selector(cfg.selector)
    # A damaged checkpoint is reported before the run directory is touched.
    if resume:
        held.append(RunLock(run_dir))  # before anything in the directory is read or repaired
    ckpt_dir, ckpt = load_run_checkpoint(run_dir) if resume else (None, None)

    # Queries come from the newest clips (query_min_clips), the scale from the newest NORM_CLIPS and the
    # pretraining round from 2 x its labels: the pool holds that, not the whole run (Atari clips are big).
    capacity = max(POOL_CLIPS, 2 * r.pretrain_labels, r.query_min_clips, NORM_CLIPS)
    # Image frames in a ring file of the run directory, not in memory (2,000 Atari clips: 377 MB); the
    # extra slots keep an evicted clip readable while the reward worker may still use it.
    ring = FrameRing(run_dir / POOL_FRAMES_FILE, capacity + capacity // 2) if task.frame_stack else None
    pool = SegmentPool(capacity=capacity, rng=rng, frames=ring)
    venv = task.make_vec_env(r.n_envs, seed=cfg.seed)
    render_fn = None
    if oracle_factory.shows_clips:
        from rlhf_control.recording.render_states import render_state_fn

        render_fn = render_state_fn(task)  # only runs shown to a person keep what clips are drawn from
    recorder = TrajectoryRecorder(venv, task.clip_length, pool, obs_fn=task.reward_obs_fn,
                                  frame_stack=task.frame_stack, render_state_fn=render_fn,
                                  keep_true_rewards=task.has_true_reward, next_obs=cfg.reward_obs == "after")
    ensemble = (RewardEnsemble.load(ckpt_dir / ENSEMBLE_FILE, device=device) if ckpt_dir is not None
                else _new_ensemble(cfg, task, venv, device))
    # Rewards are computed once per rollout, in one batch (relabel_rollouts), not once per step.
    # (SAC stores each step's reward in its replay buffer as it goes: one call per vector step.)
    on_policy = r.algo not in OFF_POLICY
    scale = (ReturnScale(recorder.num_envs, float(r.agent_params.get("gamma", 0.99)))
             if cfg.reward_return_norm and on_policy else None)
    learned = LearnedReward(recorder, ensemble.reward, obs_fn=task.reward_obs_fn, deferred=on_policy, scale=scale,
                            next_obs=cfg.reward_obs == "after")
    # The agent may see normalised observations (RL Zoo's `normalize`); the reward model never does.
    agent_env: VecEnv = VecNormalize(learned, norm_obs=True, norm_reward=False) if task.normalize else learned
    trainer_config = RewardTrainerConfig(lr=cfg.reward_lr, noise=cfg.reward_noise, adaptive_l2=cfg.reward_l2,
                                         **({} if cfg.reward_l2 else {"l2_init": 0.0}), seed=cfg.seed,
                                         crop=cfg.reward_crop)
    fitter = make_fitter(cfg.reward_fitter, ensemble, trainer_config, np.random.default_rng(cfg.seed + 1))
    if ckpt_dir is not None:
        fitter.load_state_dict(torch.load(ckpt_dir / FITTER_FILE, weights_only=True))
        agent = load_agent(r.algo, str(ckpt_dir / AGENT_FILE), agent_env, device=device, resume=True)
        if (ckpt_dir / REPLAY_FILE).is_file():  # an off-policy run continues with its transitions
            load_replay(agent, ckpt_dir / REPLAY_FILE)
        if isinstance(agent_env, VecNormalize):
            load_obs_normalization(agent_env, ckpt_dir / OBS_NORM_FILE)
    else:
        agent = make_agent(r.algo, agent_env, r.agent_params, seed=cfg.seed, device=device, policy=task.policy)
    # Image frames of the label window go to a file read by both processes (a resumed run's is checked here).
    frames = FrameFile(run_dir / FRAMES_FILE, resume=resume) if task.frame_stack else None
    dataset = PreferenceDataset(max_size=r.label_window, frame_file=frames)

    stored_recent: list[Segment] = []

    def recent_clips() -> list[Segment]:
        """The clips the reward's scale is set on: the pool's newest; a resumed run's pool starts empty,
        so until it holds enough, the newest clips of the store (read once) fill it up."""
        clips = pool.recent(min(len(pool), NORM_CLIPS))
        if len(clips) >= NORM_CLIPS or not resume:
            return clips
        if not stored_recent:
            segs = store.newest_segments(NORM_CLIPS)
            stored_recent.extend(segs if frames is None else (frames.put(s) for s in segs))
        return (stored_recent + clips)[-NORM_CLIPS:]

    reference: list[Segment] = []

    def reference_clips() -> list[Segment]:
        """The clips the reward's mean is set on with ``reward_norm = "reference"``: the first query
        round's (the pretraining clips), read from the store once, so a resumed run keeps them. Image
        clips are labelled ones: their frames are in the frame file already, and go by reference."""
        if not reference:
            segs = store.first_round_segments(NORM_CLIPS)
            reference.extend(segs if frames is None else (frames.put(s) for s in segs))
        return list(reference)

    updater = RewardUpdater(fitter, dataset, recent_clips, asynchronous=cfg.reward_async,
                            worker_args={"trainer_config": trainer_config, "window": r.label_window,
                                         "threads": cfg.torch_threads, "device": device,
                                         "fitter": cfg.reward_fitter, "continuous": cfg.reward_continuous},
                            reference_clips=reference_clips if cfg.reward_norm == "reference" else None)

    # Everything is valid: only now touch the run directory.
    if resume:
        store = PreferenceStore.open(run_dir / STORE_FILE)
        held.append(store)
        _record_resume_changes(run_dir, cfg)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        held.append(RunLock(run_dir))
        store = PreferenceStore.create(run_dir / STORE_FILE)
        held.append(store)
        write_config_file(run_dir / CONFIG_FILE, cfg, task.to_dict(),
                          {"version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    renderer = label_server = None
    if oracle_factory.shows_clips:
        from rlhf_control.video.render import SegmentRenderer
        from rlhf_control.web.server import start_server

        renderer = SegmentRenderer(task)
        label_server = start_server(run_dir, host=cfg.label_host, port=cfg.label_port, token=label_token,
                                    store=store)
        print(f"label the clips at {label_server.url}", flush=True)
    # The oracle's own stream: seeded with the run's seed it repeated the selector's draws.
    oracle_seed = int(np.random.SeedSequence([cfg.seed, ORACLE_STREAM]).generate_state(1)[0])
    oracle = oracle_factory.build(oracle_terms, oracle_seed,
                                  OracleContext(store=store, renderer=renderer, clips_dir=run_dir / CLIPS_DIR))
    return RunParts(r=r, device=device, rng=rng, schedule=schedule, selector=selector, pool=pool,
                    recorder=recorder, learned=learned, agent_env=agent_env, ensemble=ensemble, fitter=fitter,
                    dataset=dataset, updater=updater, agent=agent, store=store, oracle=oracle,
                    label_server=label_server, checkpoint=ckpt, lock=held[0])


def _record_resume_changes(run_dir: Path, cfg: RunConfig) -> None:
    """Flags a resume changed (the resumable ones: reward waiting, device, ...) go into ``config.toml``,
    so that it describes how the run went on and a later plain resume keeps them; ``[meta] resumed_with``
    lists each change."""
    doc = read_config_doc(run_dir)
    before, now = doc.get("run", {}), run_config_to_dict(cfg)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if not changed:
        return
    meta = dict(doc.get("meta", {}))
    note = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} " + ", ".join(f"{k}={now.get(k)!r}" for k in changed)
    meta["resumed_with"] = [*meta.get("resumed_with", []), note]
    write_config_file(run_dir / CONFIG_FILE, cfg, doc.get("task", {}), meta)


def _new_ensemble(cfg: RunConfig, task: TaskSpec, venv: VecEnv, device: str) -> RewardEnsemble:
    space = venv.action_space
    n_actions = int(space.n) if hasattr(space, "n") else None
    act_shape = () if n_actions is not None else tuple(space.shape)
    econf = EnsembleConfig(n_members=cfg.reward_members, net=task.reward_net, target_std=task.reward_std,
                           **dict(task.reward_net_kwargs))
    return RewardEnsemble(econf, tuple(venv.observation_space.shape), act_shape, n_actions=n_actions,
                          device=device, seed=cfg.seed)
