"""Experiment configs: one module per experiment, each with `get_config(arg=None)`.

The package is importable from the repository root (`from configs import recipes`), so a config
builds on another by importing it;
`fisher_jax.training.config_files.load_config('configs/x.py:arg')` is the one way to load a
config file outside the command line, and makes `configs` importable from any working directory.
"""
