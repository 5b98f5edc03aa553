"""Builds the RL agent (PPO, A2C, SAC from stable-baselines3; TRPO from sb3-contrib) from a config, and
the policy that acts for the pretraining clips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlhf_control.tasks.spec import algo_class


def default_policy(observation_space: spaces.Space) -> str:
    """``CnnPolicy`` for image observations (H, W, C uint8), else ``MlpPolicy``."""
    if isinstance(observation_space, spaces.Box) and observation_space.dtype == np.uint8 and len(observation_space.shape) == 3:
        return "CnnPolicy"
    return "MlpPolicy"


def make_agent(
    algo: str,
    env: VecEnv,
    hyperparams: dict[str, Any],
    seed: int,
    device: str = "cpu",
    policy: str | None = None,
    tensorboard_log: str | None = None,
) -> BaseAlgorithm:
    """Build the agent on ``env``: ``hyperparams`` are SB3 constructor keywords (activation classes resolved)."""
    cls = algo_class(algo)
    params = dict(hyperparams)
    params.pop("n_envs", None)
    policy = params.pop("policy", None) or policy or default_policy(env.observation_space)
    try:
        agent = cls(policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log, verbose=0, **params)
    except TypeError as exc:
        raise ValueError(f"bad hyperparameter for {algo}: {exc}") from None
    return agent if tensorboard_log else _quiet(agent)


def load_agent(algo: str, path: str, env: VecEnv | None, device: str = "cpu", resume: bool = False) -> BaseAlgorithm:
    """Load a saved agent and attach ``env``. SB3's ``load`` seeds an attached env, and the global
    Python, NumPy and torch generators, with the seed the agent was trained with (its next reset starts
    from that seed's states), so an agent that is only to act on an env seeded by the caller is loaded
    with ``env=None``. ``resume=True`` (a run continuing from a checkpoint) reseeds all of them from
    :func:`resume_seed` of that seed and the agent's step count instead: otherwise every resumed run
    would replay its first episodes' starts and its first steps' exploration noise."""
    agent = _quiet(algo_class(algo).load(path, env=env, device=device))
    if resume and agent.seed is not None:
        agent.set_random_seed(resume_seed(int(agent.seed), int(agent.num_timesteps)))
    return agent


def resume_seed(seed: int, step: int) -> int:
    """The seed a run of training seed ``seed`` continues with from agent step ``step`` (> 0): fixed
    for that checkpoint, so a resume is repeatable, and apart from ``seed`` and from other steps'."""
    return int(np.random.SeedSequence([seed, step, 0x5E5]).generate_state(1)[0] % 2**31)


def _quiet(agent: BaseAlgorithm) -> BaseAlgorithm:
    """A logger that records values but writes nowhere: without one, every ``learn`` call makes SB3
    create an empty ``SB3-<time>`` folder in the temporary directory."""
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


def save_obs_normalization(venv: VecNormalize, path: Path) -> None:
    """Observation statistics of a ``VecNormalize`` as an npz (no pickle)."""
    rms = venv.obs_rms
    with open(path, "wb") as f:
        np.savez(f, mean=rms.mean, var=rms.var, count=np.array(rms.count))


def load_obs_normalization(venv: VecNormalize, path: Path) -> None:
    with np.load(path, allow_pickle=False) as data:
        venv.obs_rms.mean = data["mean"]
        venv.obs_rms.var = data["var"]
        venv.obs_rms.count = float(data["count"])


class OnRolloutEnd(BaseCallback):
    """SB3 callback that calls ``fn(agent steps so far)`` at the end of every rollout."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.fn(int(self.model.num_timesteps))


def pretrain_actor(agent: BaseAlgorithm, agent_env: VecEnv, recorder: VecEnv, how: str, seed: int
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """``obs -> actions`` for ``recorder``'s envs of the pretraining policy: the agent's untrained one
    (``how = "untrained"``, sampled as in its rollouts) or uniformly random actions (``"uniform"``), with
    its own seeded randomness (the run's random streams stay as they are)."""
    rng = np.random.default_rng(seed + 7)
    if how == "uniform":
        space = recorder.action_space
        space.seed(int(rng.integers(2**31)))
        return lambda obs: np.stack([space.sample() for _ in range(recorder.num_envs)])
    policy, n_envs = agent.policy, recorder.num_envs
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    norm = agent_env.normalize_obs if isinstance(agent_env, VecNormalize) else (lambda o: o)
    # gSDE policies draw their exploration noise every sde_sample_freq steps, as in SB3's rollouts.
    resample = getattr(agent, "sde_sample_freq", -1) if getattr(agent, "use_sde", False) else 0
    calls = [0]
    # Only the generator the policy samples on is seeded (and restored after): torch.manual_seed would
    # also seed every other device type, and on a CPU-only build that costs more than the policy's
    # forward pass (2-3 ms a call, each queuing a traceback for a lazy CUDA seeding), measured.
    cuda = [policy.device] if policy.device.type == "cuda" else []

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            s = int(torch.randint(2**31, (1,), generator=gen))
            torch.random.default_generator.manual_seed(s)
            if cuda:
                torch.cuda.manual_seed(s)
            if resample and (calls[0] == 0 or (resample > 0 and calls[0] % resample == 0)):
                policy.reset_noise(n_envs)
            calls[0] += 1
            return policy.predict(norm(obs), deterministic=False)[0]

    return act


RESET_UPDATES = 100
"""gradient steps SAC takes right after :func:`reset_critic` (PEBBLE's ``reset_update``)"""


def reset_critic(agent: BaseAlgorithm) -> None:
    """PEBBLE's reset after its unsupervised phase: SAC's critics start again from a fresh initialisation
    (PyTorch's default for linear layers, as SB3 builds them), the target critics copy them, and the
    critic's Adam state starts afresh; the actor and the entropy coefficient are kept. A critic fitted
    to the state-entropy reward would otherwise carry its values into learning the preference reward."""
    policy = agent.policy
    critic = policy.critic
    for module in critic.modules():
        if module is not critic and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    policy.critic_target.load_state_dict(critic.state_dict())
    shared = getattr(policy, "share_features_extractor", False)
    params = [p for name, p in critic.named_parameters() if not (shared and "features_extractor" in name)]
    critic.optimizer = policy.optimizer_class(params, lr=agent.lr_schedule(agent._current_progress_remaining),
                                              **policy.optimizer_kwargs)
