"""The task catalogue (envs/*.toml) and the wrappers its entries name."""
