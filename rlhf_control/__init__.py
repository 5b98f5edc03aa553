"""rlhf-control: deep reinforcement learning from human preferences (Christiano et al. 2017)."""

__version__ = "0.1.0"
