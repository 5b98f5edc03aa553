"""The RL agent: construction, the learned-reward VecEnv wrapper, and evaluation."""
