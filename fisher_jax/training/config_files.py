"""Experiment config files (`configs/*.py`) outside the command line, and their fields.

`load_config('configs/x.py:cpu')` returns what `--config configs/x.py:cpu` gives `main.py`: the
file's `get_config()`, called with the text after ':' when there is one. A config file builds on
others by importing them (`from configs import recipes`); `make_importable` puts the folder above
a config package on `sys.path`, so that works from any working directory (`main.py` calls it
before absl loads `--config`). `flat_fields` turns a config (as the dict of its JSON, e.g. a
run's config.json) into dotted field names.
"""

import importlib.util
import os
import sys
from typing import Any, Dict

from fisher_jax import _extras

_extras.require('train', __name__)

import ml_collections


def make_importable(spec: str):
  """Puts the folder that holds `path`'s config package on `sys.path` (spec: `path[:arg]`).

  A config file in a package (a folder with `__init__.py`, like `configs/`) imports its
  siblings as `from configs import recipes`; this makes that import work wherever the run is
  started from. A file outside a package needs nothing.
  """
  folder = os.path.dirname(os.path.abspath(spec.partition(':')[0]))
  if os.path.exists(os.path.join(folder, '__init__.py')):
    root = os.path.dirname(folder)
    if root not in sys.path:
      sys.path.append(root)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` and returns `get_config()` or `get_config(arg)`."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise ValueError(f'config file {path!r} does not exist.')
  make_importable(spec)
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
