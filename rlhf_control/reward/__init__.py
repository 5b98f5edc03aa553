"""Reward learning: predictor networks, the normalised ensemble, the label window and its trainer."""

from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.losses import preference_loss
from rlhf_control.reward.nets import CNNReward, MLPReward
from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig, TrainReport

__all__ = [
    "CNNReward",
    "EnsembleConfig",
    "MLPReward",
    "PreferenceDataset",
    "RewardEnsemble",
    "RewardTrainer",
    "RewardTrainerConfig",
    "TrainReport",
    "preference_loss",
]
