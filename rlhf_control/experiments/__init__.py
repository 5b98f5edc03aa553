"""Sweeps, their backends, the paper's presets, the RL baseline and reports."""
