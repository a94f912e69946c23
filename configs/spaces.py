"""Search spaces for hyperparameter search (`python -m experiments.tune --space NAME`).

A space is a function of an Optuna trial that suggests values and returns the config overrides
of that trial, `{dotted config field: value}`; the parameters are named by the fields they set,
so a trial's parameters read as overrides (`--config.optimizer.learning_rate=0.0123`). A space
may derive fields from what it suggests (e.g. turn a penalty on). It works with any config that
has the fields; `experiments.tune` refuses a field the config does not define.

  python -m experiments.tune --config configs/default.py --space lr --study lr --trials 8

| space | suggests |
| --- | --- |
| lr | optimizer.learning_rate, log-uniform in [1e-3, 0.3] |
| lr_batch | optimizer.learning_rate as in lr, batch_size in {32, 64, 128, 256} |
| lr_fp | optimizer.learning_rate as in lr, the Fisher penalty's strength log-uniform in [1e-3, 1] |

The learning-rate range spans the study's small (0.001-0.003) and tuned (0.03) learning rates
and the large ones that diverge at small batches; the batch sizes those of its batch-size sweep.
"""

from typing import Any, Callable, Dict

Overrides = Dict[str, Any]


def _learning_rate(trial) -> Overrides:
  return {'optimizer.learning_rate': trial.suggest_float('optimizer.learning_rate', 1e-3, 0.3,
                                                         log=True)}


def lr(trial) -> Overrides:
  """The learning rate alone."""
  return _learning_rate(trial)


def lr_batch(trial) -> Overrides:
  """The learning rate and the (global) batch size: the study's Fisher-explosion axes."""
  return {**_learning_rate(trial),
          'batch_size': trial.suggest_categorical('batch_size', [32, 64, 128, 256])}


def lr_fp(trial) -> Overrides:
  """The learning rate and the strength of the Fisher penalty (turned on)."""
  return {**_learning_rate(trial), 'regularizer.name': 'fp',
          'regularizer.strength': trial.suggest_float('regularizer.strength', 1e-3, 1.0,
                                                      log=True)}


SPACES: Dict[str, Callable[[Any], Overrides]] = {'lr': lr, 'lr_batch': lr_batch, 'lr_fp': lr_fp}


def get_space(name: str) -> Callable[[Any], Overrides]:
  """The space called `name`.

  Raises:
    ValueError: no such space.
  """
  if name not in SPACES:
    raise ValueError(f'--space={name!r} is unknown; choose one of {list(SPACES)} '
                     '(configs/spaces.py).')
  return SPACES[name]
