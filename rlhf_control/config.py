"""Run configuration: one typed, frozen dataclass, read from and written to TOML.

A run writes its whole resolved config (``config.toml``: the run settings plus the full task entry) next
to its results; ``rlhf-control train --config FILE`` reruns it, and flags beside ``--config`` override it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from rlhf_control.errors import UserError
from rlhf_control.queries.schedule import SCHEDULES, pretrain_count
from rlhf_control.rundir import read_toml, write_atomic
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import (
    ALGOS,
    OFF_POLICY,
    OFF_POLICY_REWARD_EPOCHS,
    QUERY_MIN_CLIPS,
    TaskSpec,
    algo_class,
    default_iteration_steps,
    default_query_window,
)

RECENT_REPLAY_EPISODES = 10  # hybrid replay's window (QPA's policy-aligned buffer)

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class RunConfig:
    """Settings of one RLHF run. ``None`` means "the task's default".

    Each field's docstring is its ``rlhf-control train`` flag's help (``field_docs``). A field's
    ``metadata`` may give the flag another name (``flag``, with ``invert`` for a flag that sets a
    boolean to False), mark it as one ``--resume`` may change (``resumable``), or keep it out of the
    command line (``cli=False``: set it in a config file).
    """

    task: str = "Pendulum-v1"
    """catalogue task name or any Gymnasium id"""
    oracle: str = "perfect"
    """who answers: perfect, a B-Pref teacher (stochastic, mistake, skip, equal, myopic; combine with +,
    options as name:key=value), or human"""
    selector: str = "variance"
    """how query pairs are chosen: random, variance (the paper's), entropy (B-Pref's), predictive-entropy, kcenter-variance"""
    query_min_clips: int | None = None
    """online queries are drawn from the clips of the rollouts since the last query round, widened to at
    least this many of the newest clips of the agent (default 256, or a task entry's query_episodes for
    sac; random-policy clips are never candidates once RL starts; sac's random steps are its own)"""
    labels: int | None = None
    """label budget of the run (default: the task's)"""
    pretrain_labels: int | None = None
    """labels asked on random-policy clips before RL starts (default: the task's share of the budget)"""
    pretrain_epochs: int | None = None
    """reward-training epochs after the pretraining labels (default: the task's)"""
    pretrain_policy: str = field(default="untrained", metadata={"choices": ("untrained", "uniform")})
    """who acts for the pretraining clips: the agent's untrained policy (the paper's "randomly initialized
    policy network") or uniformly random actions"""
    steps: int | None = None
    """agent steps of the run (default: the task's)"""
    seed: int = 0
    """seed of the envs, the agent, the reward model and the oracle"""
    algo: str | None = field(default=None, metadata={"choices": ALGOS})
    """RL algorithm (default: the task's); another than the task's starts from SB3's defaults"""
    device: str = field(default="cpu", metadata={"resumable": True})
    """torch device of the agent and the reward model: cpu, cuda[:N] or auto"""
    n_envs: int | None = None
    """parallel envs (default: the task's)"""
    schedule: str | None = None
    """label schedule: paper, constant, offline or bpref (B-Pref's rounds) (default: the task's)"""
    label_batch: int | None = None
    """bpref schedule: labels per round, one round every iteration (B-Pref's reward_batch; default a tenth
    of the budget)"""
    label_window: int | None = None
    """newest labels the reward is trained on (default: the task's)"""
    reward_members: int = 3
    """predictors in the reward ensemble"""
    reward_epochs: int | None = None
    """passes over the label window per retraining (default: the task's; 50, PEBBLE's, when sac runs a
    task written for an on-policy agent)"""
    reward_noise: float = 0.1
    """assumed chance that an answer is uniformly random (the paper's 10%)"""
    reward_lr: float = 1e-3
    """learning rate of the reward predictors"""
    reward_l2: bool = field(default=True, metadata={"flag": "--no-reward-l2", "invert": True})
    """adaptive L2 on the reward predictors (off: the paper's no-regularization ablation)"""
    reward_crop: int = 0
    """temporal cropping (SURF's augmentation): each training pair's returns are summed over a random
    window of each clip, its length drawn per pair from clip length minus up to this many steps (0: off)"""
    reward_async: bool = field(default=True, metadata={"flag": "--sync-reward", "invert": True,
                                                       "resumable": True})
    """retrain the reward in a second process during the next rollout (off: in this process, between
    rollouts)"""
    reward_continuous: bool = False
    """keep training the reward in the worker, one pass over the window at a time, until the next
    iteration takes its weights (the paper's predictor trains without pause); runs then depend on timing"""
    reward_wait: bool = field(default=True, metadata={"flag": "--no-reward-wait", "invert": True, "resumable": True})
    """each iteration waits for the worker's retraining (off: takes it only once finished, else the agent goes
    on with the current reward and the labels go in the next job, as the paper's processes; runs depend on timing)"""
    reward_norm: str = field(default="reference", metadata={"choices": ("reference", "recent")})
    """where the reward's zero is set after each retraining: reference (mean 0 on the clips of the first
    query round, the pretraining clips, fixed for the run: a behaviour keeps its reward as the agent
    improves) or recent (mean 0 on the newest 512 clips of the agent: the reward of a fixed behaviour
    sinks as the agent gets better); the scale is set on the newest clips either way"""
    reward_return_norm: bool = field(default=True, metadata={"flag": "--no-reward-return-norm", "invert": True})
    """divide the learned reward an on-policy agent trains on by the running std of its discounted
    return, as the RL baseline does with the true reward (SB3's VecNormalize); the reward model is
    unchanged, and an off-policy agent (sac) keeps the ensemble's reward in its replay buffer"""
    reward_obs: str = field(default="before", metadata={"choices": ("before", "after")})
    """the observation each step's learned reward is computed from: before (the one the action was taken
    from, the paper's r(o_t, a_t)) or after (the one the action led to; not for frame-stacked tasks)"""
    reward_fitter: str = "comparisons"
    """how the reward is fitted: comparisons (the paper's) or true-return-regression (an ablation)"""
    clip_length: int | None = None
    """agent steps per clip (default: the task's)"""
    checkpoint_every: int = 5
    """iterations between checkpoints"""
    checkpoint_minutes: float = field(default=10.0, metadata={"resumable": True})
    """also checkpoint at the first iteration this many minutes after the last checkpoint (0: by
    iterations only); a run also checkpoints right after pretraining and when stopped (SIGTERM, Ctrl-C)"""
    iteration_steps: int | None = None
    """agent steps per iteration (default one rollout, at least 2,048 or an eighth of the run)"""
    wait_for_labels: bool = field(default=False, metadata={"resumable": True})
    """human oracle: pause the agent whenever the labels fall behind the schedule (--label-slack 0)"""
    label_slack: int = field(default=3, metadata={"resumable": True})
    """human oracle: labels the answers may fall behind the schedule before the agent pauses for the
    labeller (it goes on as answers arrive; the last iteration waits for the whole budget)"""
    label_buffer: int = field(default=3, metadata={"resumable": True})
    """human oracle: pairs chosen and rendered ahead of the labellers (newest clips first)"""
    run_ahead: bool = field(default=False, metadata={"resumable": True})
    """human oracle: never pause for the labeller; each iteration queues its due pairs (up to
    --max-pending) and stale ones are retired, as synthetic oracles' are"""
    max_pending: int = field(default=40, metadata={"resumable": True})
    """cap on queries waiting for an answer"""
    stale_after_steps: int | None = field(default=None, metadata={"flag": "--stale-after", "resumable": True})
    """retire queries not answered within this many agent steps (default: a quarter of the run)"""
    unsup_steps: int | None = None
    """sac: PEBBLE's unsupervised pre-training, agent steps trained on the state entropy of the replay
    buffer after the agent's random steps (learning_starts) and before the first labels; 0 turns it off
    (default: the task's, 9,000)"""
    relabel: bool = field(default=True, metadata={"flag": "--no-relabel", "invert": True})
    """sac: after each reward update recompute the reward of every transition in the replay buffer (off:
    stored transitions keep the reward they were stored with, an ablation)"""
    critic_reset: bool = field(default=True, metadata={"flag": "--no-critic-reset", "invert": True})
    """sac: at the first labels, after the buffer is relabelled, start SAC's critics afresh and take 100
    gradient steps (PEBBLE's reset after its unsupervised phase; off: keep the critics trained on the
    state entropy, an ablation)"""
    recent_replay: float = 0.0
    """sac: share of each SAC batch drawn from the agent's last 10 episodes, the rest from the whole buffer
    (QPA's hybrid experience replay uses 0.5); 0 samples the whole buffer uniformly, as PEBBLE does"""
    eval_episodes: int | None = None
    """episodes of each deterministic evaluation of the policy on the true reward (fixed seeds, its own
    env) that fills eval_true_return; 0 turns evaluation off (default: the task's, 10; 2 for Atari)"""
    eval_every: int | None = None
    """iterations between evaluations; the last iteration is always evaluated (default: the task's, 5;
    100 for Atari, whose episodes are 10,000 steps)"""
    torch_threads: int = 1
    """torch threads per process (the paper's networks are tiny: one is fastest on a CPU)"""
    label_host: str = field(default="127.0.0.1", metadata={"resumable": True})
    """address of the labelling app with the human oracle (anything but 127.0.0.1 needs --label-token)"""
    label_port: int = field(default=8765, metadata={"resumable": True})
    """port of the labelling app (0 picks a free one)"""
    agent: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    """the agent's hyperparameters over the task's (a config file's [run.agent] table)"""

    def __post_init__(self) -> None:
        for name in ("labels", "steps", "n_envs", "label_window", "clip_length", "iteration_steps", "label_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name.replace('_', '-')} {value!r} must be a positive integer")
        for name in ("pretrain_labels", "pretrain_epochs", "unsup_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"{name.replace('_', '-')} {value!r} must be a non-negative integer")
        for name, low in (("query_min_clips", 2), ("eval_episodes", 0), ("eval_every", 1)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name.replace('_', '-')} {value!r} must be an integer >= {low}")
        for f in fields(self):  # reward-norm, pretrain-policy, reward-obs, algo (None: the task's)
            value, allowed = getattr(self, f.name), f.metadata.get("choices", ())
            if allowed and value is not None and value not in allowed:
                raise UserError(f"{f.name.replace('_', '-')} {value!r} is not allowed; use "
                                f"{', '.join(allowed[:-1])} or {allowed[-1]}")
        if self.reward_epochs is not None and (not isinstance(self.reward_epochs, int) or self.reward_epochs < 1):
            raise UserError(f"reward-epochs {self.reward_epochs!r} must be a positive integer")
        if type(self.recent_replay) not in (int, float) or not 0.0 <= self.recent_replay <= 1.0:
            raise UserError(f"recent-replay {self.recent_replay!r} must be a fraction in [0, 1]")
        if not 0.0 <= self.reward_noise < 1.0:
            raise UserError(f"reward-noise {self.reward_noise} must be in [0, 1)")
        for name, low in (("label_slack", 0), ("label_buffer", 1), ("reward_crop", 0), ("reward_members", 1),
                          ("torch_threads", 1), ("checkpoint_every", 1), ("max_pending", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name.replace('_', '-')} {value!r} must be an integer >= {low}")
        for both, given in (("wait-for-labels and run-ahead", self.wait_for_labels and self.run_ahead),
                            ("reward-continuous and no-reward-wait", self.reward_continuous and not self.reward_wait)):
            if given:
                raise UserError(f"{both} contradict each other; give one of them")
        if isinstance(self.checkpoint_minutes, bool) or not isinstance(self.checkpoint_minutes, (int, float)) \
                or not 0 <= self.checkpoint_minutes < float("inf"):
            raise UserError(f"checkpoint-minutes {self.checkpoint_minutes!r} must be a number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserError(f"seed {self.seed!r} must be an integer in [0, 2**32 - 1]")
        if self.stale_after_steps is not None and (type(self.stale_after_steps) is not int or self.stale_after_steps < 1):
            raise UserError(f"stale-after {self.stale_after_steps!r} must be an integer >= 1 (agent steps; "
                            "leave it out for a quarter of the run)")
        if isinstance(self.label_port, bool) or not isinstance(self.label_port, int) or not 0 <= self.label_port <= 65535:
            raise UserError(f"label-port {self.label_port!r} must be an integer in [0, 65535] (0 picks a free port)")
        if not self.reward_lr > 0:
            raise UserError(f"reward-lr {self.reward_lr!r} must be a number > 0")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise UserError(f"device {self.device!r} is not allowed; use one of {', '.join(DEVICES)}")

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


RUN_KEYS = tuple(f.name for f in fields(RunConfig))


def field_docs(cls: type = RunConfig) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal after it in the class body), on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def run_config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig, refusing unknown keys with a one-line error."""
    unknown = sorted(set(data) - set(RUN_KEYS))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(RUN_KEYS)}")
    return RunConfig(**data)


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain dict with ``None`` values left out (TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}


def load_config_file(path: Path) -> tuple[RunConfig, dict[str, Any] | None]:
    """Read a config TOML: ``[run]`` settings and, in a resolved config, the ``[task]`` entry."""
    path = Path(path)
    data = read_toml(path, "config file")
    unknown = sorted(set(data) - {"run", "task", "meta"})
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(unknown)} in {path}; allowed: run, task, meta")
    run = run_config_from_dict(data.get("run", {}), where=str(path))
    return run, data.get("task")


def write_config_file(path: Path, cfg: RunConfig, task: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write the resolved config atomically."""
    write_atomic(Path(path), tomli_w.dumps({"meta": meta, "run": run_config_to_dict(cfg), "task": _drop_none(task)}))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_drop_none(v) for v in obj if v is not None]
    return obj


# ----------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Resolved:
    """The run settings with every task default filled in."""

    cfg: RunConfig
    task: TaskSpec
    algo: str
    steps: int
    labels: int
    pretrain_labels: int
    pretrain_epochs: int
    reward_epochs: int
    n_envs: int
    schedule: str
    label_window: int
    agent_params: dict[str, Any]
    iteration_steps: int
    schedule_horizon: float  # the paper's schedule constant in agent steps (the task's counts frames)
    eval_episodes: int
    eval_every: int
    rl_start: int = 0  # off-policy agents: the step of the first labels (random + unsupervised steps)
    query_min_clips: int = QUERY_MIN_CLIPS  # the floor of the query window, in clips
    recent_replay_steps: int = 0  # off-policy agents: the newest transitions hybrid replay draws from


def resolve(cfg: RunConfig, task: TaskSpec | None = None) -> Resolved:
    """Fill the task's defaults into ``cfg`` (flags win over the task entry)."""
    task = task or get_task(cfg.task)
    if cfg.clip_length is not None:
        task = task.with_overrides(clip_length=cfg.clip_length)
    if cfg.reward_crop > task.clip_length:
        raise UserError(f"reward-crop {cfg.reward_crop} must not exceed the clip length {task.clip_length} "
                        f"of task {task.name!r} (0 turns the crop off)")
    algo = cfg.algo or task.algo
    if algo != task.algo:
        # The task's hyperparameters belong to its own algorithm: another one starts from SB3's
        # defaults, keeping the task's discount and the user's own overrides (SAC: PEBBLE's 1,000
        # random steps, not SB3's 100).
        agent = {"gamma": task.agent.get("gamma", 0.99), **({"learning_starts": 1000} if algo == "sac" else {})}
        # So do its reward epochs: per iteration for an on-policy entry, per label round off-policy.
        epochs = ({"reward_epochs": OFF_POLICY_REWARD_EPOCHS}
                  if algo in OFF_POLICY and task.algo not in OFF_POLICY else {})
        task = dataclasses.replace(task, algo=algo, agent=agent, **epochs)
    if cfg.agent:
        task = task.with_overrides(agent=dict(cfg.agent))
    labels = cfg.labels or task.label_budget
    schedule = cfg.schedule or task.schedule
    pretrain = pretrain_count(schedule, labels, cfg.pretrain_labels, task.pretrain_labels, task.label_budget,
                              task.pretrain_share)
    agent_params = task.agent_kwargs()
    SCHEDULES.get(schedule)  # an unknown name (the flag's or the task's) fails here, naming the known ones
    steps = cfg.steps or task.total_steps
    n_envs = cfg.n_envs or task.n_envs
    if cfg.label_batch is not None and schedule != "bpref":
        raise UserError(f"label-batch {cfg.label_batch} is for the bpref schedule; this run's schedule is {schedule!r}")
    rl_start = _off_policy_start(cfg, task, algo, agent_params, steps, n_envs)
    return Resolved(
        cfg=cfg,
        task=task,
        algo=algo,
        steps=steps,
        labels=labels,
        pretrain_labels=pretrain,
        pretrain_epochs=task.pretrain_epochs if cfg.pretrain_epochs is None else cfg.pretrain_epochs,
        reward_epochs=cfg.reward_epochs or task.reward_epochs,
        n_envs=n_envs,
        schedule=schedule,
        label_window=cfg.label_window or task.label_window,
        agent_params=agent_params,
        iteration_steps=(cfg.iteration_steps or task.iteration_steps
                         or default_iteration_steps(algo, agent_params, n_envs, steps)),
        schedule_horizon=task.schedule_horizon / task.frames_per_step,
        eval_episodes=task.eval_episodes if cfg.eval_episodes is None else cfg.eval_episodes,
        eval_every=cfg.eval_every or task.eval_every,
        rl_start=rl_start,
        query_min_clips=cfg.query_min_clips or default_query_window(task, algo),
        recent_replay_steps=RECENT_REPLAY_EPISODES * task.episode_steps if algo in OFF_POLICY else 0,
    )


def _off_policy_start(cfg: RunConfig, task: TaskSpec, algo: str, agent_params: dict[str, Any], steps: int,
                      n_envs: int) -> int:
    """The step of an off-policy run's first labels: its random steps (``learning_starts``) plus PEBBLE's
    unsupervised ones; 0 for on-policy agents. Refuses pre-training that does not end before the run
    does, and a replay buffer smaller than one segment."""
    if algo not in OFF_POLICY:
        if cfg.unsup_steps:
            raise UserError(f"unsup-steps {cfg.unsup_steps} is for off-policy agents (sac); algo {algo!r} has "
                            "no replay buffer (give 0 or leave it out)")
        if not cfg.critic_reset:
            raise UserError(f"no-critic-reset is for off-policy agents (sac); algo {algo!r} has no critic to reset")
        if cfg.recent_replay:
            raise UserError(f"recent-replay {cfg.recent_replay} is for off-policy agents (sac); algo {algo!r} has "
                            "no replay buffer (give 0 or leave it out)")
        return 0
    task.require_box_actions(algo)  # first: no other value of the run can make a discrete task fit
    params = inspect.signature(algo_class(algo)).parameters
    random_steps = int(agent_params.get("learning_starts", params["learning_starts"].default))
    unsup = task.unsup_steps if cfg.unsup_steps is None else cfg.unsup_steps
    if random_steps + unsup >= steps:
        raise UserError(f"unsup-steps {unsup} after {random_steps} random steps (learning_starts) must end before "
                        f"the run's {steps} steps; allowed: 0 to {max(steps - random_steps - 1, 0)}")
    buffer = int(agent_params.get("buffer_size", params["buffer_size"].default))
    if buffer // n_envs < task.clip_length:
        raise UserError(f"replay buffer_size {buffer} ({buffer // n_envs} per env) is smaller than one segment of "
                        f"{task.clip_length} steps; allowed: at least {task.clip_length * n_envs}")
    return random_steps + unsup


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda[:N]``, or what ``auto`` picks on this machine; refuses CUDA where there is none."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} is not available on this machine (no CUDA); use cpu")
    return name
