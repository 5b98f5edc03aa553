"""The RLHF loop: building its parts, the trainer, checkpoints and metrics."""
