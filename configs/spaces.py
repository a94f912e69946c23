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
| lr_batch | optimizer.learning_rate log-uniform in [1e-3, 1], batch_size in {32, 64, 128, 256} |
| lr_fp | optimizer.learning_rate as in lr, the Fisher penalty's strength log-uniform in [1e-3, 1] |

The learning-rate ranges span the study's small and tuned learning rates (digits: 0.003 and
0.03; the Fashion-MNIST MLP: 0.01 and 0.3); `lr_batch` goes on to 1, where the Fashion-MNIST
pilot diverged, so a search meets divergence as one of its results. The batch sizes are those
of the study's batch-size sweeps.
"""

from typing import Any, Callable, Dict

Overrides = Dict[str, Any]


def _learning_rate(trial, high: float = 0.3) -> Overrides:
  return {'optimizer.learning_rate': trial.suggest_float('optimizer.learning_rate', 1e-3, high,
                                                         log=True)}


def lr(trial) -> Overrides:
  """The learning rate alone."""
  return _learning_rate(trial)


def lr_batch(trial) -> Overrides:
  """The learning rate (up to 1: diverging ones included) and the (global) batch size."""
  return {**_learning_rate(trial, high=1.0),
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
