"""Experiment config files (`configs/*.py`) outside the command line, and their fields.

`load_config('configs/x.py:cpu')` returns what `--config configs/x.py:cpu` gives `main.py`: the
file's `get_config()`, called with the text after ':' when there is one. `flat_fields` turns a
config (as the dict of its JSON, e.g. a run's config.json) into dotted field names.
"""

import importlib.util
import os
from typing import Any, Dict

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


def flat_fields(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'optimizer': {'learning_rate': 0.1}} -> {'optimizer.learning_rate': 0.1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat
