"""Tasks: ``spec`` (TaskSpec), ``catalogue`` (envs/*.toml, any Gymnasium id), ``suites``, ``wrappers``."""
