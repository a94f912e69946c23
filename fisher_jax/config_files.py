"""Loading experiment config files (`configs/*.py`) outside the command line.

`load_config('configs/x.py:cpu')` returns what `--config configs/x.py:cpu` gives `main.py`: the
file's `get_config()`, called with the text after ':' when there is one.
"""

import importlib.util
import os

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` and returns `get_config()` or `get_config(arg)`."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise ValueError(f'config file {path!r} does not exist.')
  name = 'fisher_jax_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
