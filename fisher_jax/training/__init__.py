"""The trainer: `train_and_evaluate(config, workdir)` and what it is built from.

  from fisher_jax import training
  config = training.load_config('configs/default.py')
  training.train_and_evaluate(config, '/tmp/run')

`loop` runs a training from a config (what `python -m fisher_jax.main` runs); `settings`
validates the config once; `steps` and `state` are the pure per-device steps and the train
state; `optim` builds the optimizer, `mesh` and `multihost` the data parallelism;
`checkpoint`, `writers`, `console`, `guard`, `quiet` and `exit_codes` what a run writes and how
it ends; `cadence` and `fit_stop` when things happen and when a run has fitted.

The two names above are loaded on first use (PEP 562), so that importing a small module of this
package (`fisher_jax.training.cadence`) does not import TensorFlow.
"""

import importlib

_LAZY = {'train_and_evaluate': 'fisher_jax.training.loop',
         'load_config': 'fisher_jax.training.config_files'}

__all__ = tuple(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
