"""SB3's SAC with three of PEBBLE's SAC settings as options (its ``agent/sac.py`` and ``config/agent/
sac.yaml``, the pytorch_sac code B-Pref builds on), each off by default, so that a run without them is
SB3's SAC step for step:

- ``target_update_interval`` counted over the run's gradient steps. SB3 counts it within one ``train``
  call, and with ``gradient_steps=1`` (one update per env step, PEBBLE's) every call is one step, so the
  targets moved on every step whatever the interval; PEBBLE moves them on every second step
  (``critic_target_update_frequency: 2``).
- ``ent_coef_lr``: the temperature's own learning rate (PEBBLE's ``alpha_lr``, 1e-4), where SB3 uses the
  actor's and critic's.
- ``log_std_bounds`` (a policy keyword): the actor's log-std squashed into ``[lo, hi]`` by a tanh,
  ``lo + (hi - lo) * (tanh(x) + 1) / 2`` (PEBBLE's ``[-5, 2]``), where SB3 clips it to ``[-20, 2]``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.sac.policies import Actor, SACPolicy


class SquashedLogStdActor(Actor):
    """SB3's SAC actor with its log-std squashed into ``log_std_bounds`` by a tanh, as PEBBLE's."""

    def __init__(self, *args: Any, log_std_bounds: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))

    def get_action_dist_params(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        if self.use_sde:
            return super().get_action_dist_params(obs)
        latent_pi = self.latent_pi(self.extract_features(obs, self.features_extractor))
        lo, hi = self.log_std_bounds
        log_std = lo + 0.5 * (hi - lo) * (th.tanh(self.log_std(latent_pi)) + 1.0)  # type: ignore[operator]
        return self.mu(latent_pi), log_std, {}


class PebbleSACPolicy(SACPolicy):
    """``SACPolicy`` whose actor squashes its log-std into ``log_std_bounds`` when they are given."""

    def __init__(self, *args: Any, log_std_bounds: tuple[float, float] | list[float] | None = None,
                 **kwargs: Any) -> None:
        if log_std_bounds is not None and not (len(log_std_bounds) == 2 and log_std_bounds[0] < log_std_bounds[1]):
            raise ValueError(f"log_std_bounds={list(log_std_bounds)} is not allowed; use [low, high] with low < high")
        self.log_std_bounds = None if log_std_bounds is None else tuple(float(b) for b in log_std_bounds)
        super().__init__(*args, **kwargs)

    def make_actor(self, features_extractor=None) -> Actor:
        if self.log_std_bounds is None:
            return super().make_actor(features_extractor)
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return SquashedLogStdActor(**kwargs, log_std_bounds=self.log_std_bounds).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "log_std_bounds": self.log_std_bounds}


class PebbleSAC(SAC):
    """SB3's SAC with PEBBLE's target-update interval, temperature learning rate and log-std squashing
    available (see the module docstring); ``ent_coef_lr=None`` and an interval of 1 are SB3's."""

    policy_aliases = {**SAC.policy_aliases, "MlpPolicy": PebbleSACPolicy}

    def __init__(self, *args: Any, ent_coef_lr: float | None = None, **kwargs: Any) -> None:
        if ent_coef_lr is not None and not ent_coef_lr > 0:
            raise ValueError(f"ent_coef_lr={ent_coef_lr!r} is not allowed; use a positive number")
        self.ent_coef_lr = None if ent_coef_lr is None else float(ent_coef_lr)
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: Any) -> None:
        if self.ent_coef_lr is None or self.ent_coef_optimizer is None:
            return super()._update_learning_rate(optimizers)
        super()._update_learning_rate([o for o in optimizers if o is not self.ent_coef_optimizer])
        update_learning_rate(self.ent_coef_optimizer, self.ent_coef_lr)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        if self.target_update_interval == 1:
            return super().train(gradient_steps, batch_size)
        # One gradient step at a time, the targets moving (tau) only on every interval-th step of the run:
        # SB3's own test restarts its count at every call. With tau 0 its soft update leaves them as they are.
        tau = self.tau
        try:
            for _ in range(gradient_steps):
                self.tau = tau if self._n_updates % self.target_update_interval == 0 else 0.0
                super().train(1, batch_size)
        finally:
            self.tau = tau


# SAC's own keywords and ``ent_coef_lr``, for what reads the signature (the catalogue's check of an
# entry's agent keywords, the CLI's defaults).
_SAC = inspect.signature(SAC.__init__)
PebbleSAC.__init__.__signature__ = _SAC.replace(parameters=[  # type: ignore[attr-defined]
    *_SAC.parameters.values(), inspect.Parameter("ent_coef_lr", inspect.Parameter.KEYWORD_ONLY, default=None)])
