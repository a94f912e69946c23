"""The one validation of a config: `read(config) -> Settings`, typed and checked, at start-up.

`train_and_evaluate` reads the config once, here, before it touches the workdir; every part then
receives its own settings (`optim.make_optimizer(settings.optimizer, settings.regularizer, ...)`,
`data.make_input(settings.dataset, ...)`), never the whole config. Defaults live in the config
files only (configs/default.py): a field a config lacks is an error naming it, not a silent
default in code. An unknown name or an impossible value fails with one sentence that names the
field and what is allowed.

The section readers (`read_optimizer(config.optimizer)`, `read_regularizer(config.regularizer)`,
`read_measure(config.measure)`) serve library users who build one part from a config section.
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from fisher_jax import regularizers
from fisher_jax.curvature import FISHER_ESTIMATORS
from fisher_jax.training import guard
from fisher_jax.training.fields import choice, integer, number, required

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """`config.model`: the registry name and the family's options (checked by `models`)."""
  name: str
  kwargs: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """`config.optimizer`, validated (see configs/default.py for the meanings)."""
  name: str
  learning_rate: float
  momentum: float
  nesterov: bool
  weight_decay: float
  schedule: str
  warmup_epochs: float
  decay_epochs: Tuple[float, ...]
  decay_factor: float


@dataclasses.dataclass(frozen=True)
class RegularizerSettings:
  """`config.regularizer`, validated; `name` is the current name (deprecated ones mapped)."""
  name: str
  strength: float
  every_k: int
  start_epoch: float


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
  """`config.measure`, validated (periods 0: off)."""
  every_epochs: int
  every_steps: int
  num_examples: int
  fisher_estimator: str
  hessian_every_epochs: int
  hessian_probes: int
  hessian_num_examples: int
  per_leaf: bool
  eigen_every_epochs: int
  eigen_k: int
  eigen_iterations: int
  every_steps_until_epoch: float  # `every_steps` only up to this epoch (0: the whole run)


@dataclasses.dataclass(frozen=True)
class StopSettings:
  """`config.stop`: the fit target (0: off) and the epochs trained after reaching it (see
  fisher_jax.training.fit_stop)."""
  train_accuracy: float
  extra_epochs: int


@dataclasses.dataclass(frozen=True)
class InitFromSettings:
  """`config.init_from`: another run's workdir (None: start fresh) and checkpoint step."""
  workdir: Optional[str]
  step: Optional[int]


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every field of a run's config, validated; each part gets its section."""
  seed: int
  batch_size: int
  num_epochs: int
  dataset: Any  # data.DatasetSettings (fisher_jax.data loads TensorFlow: imported in `read`)
  model: ModelSettings
  optimizer: OptimizerSettings
  regularizer: RegularizerSettings
  measure: MeasureSettings
  stop: StopSettings
  init_from: InitFromSettings
  eval_every_epochs: int
  checkpoint_every_epochs: int
  log_every_steps: int
  checkpoint_keep: int  # The latest checkpoints kept (the best-by-val/accuracy one besides).
  guard_nonfinite: str  # `config.guard.nonfinite`: 'stop' or 'off' (see fisher_jax.training.guard).


def read_optimizer(opt_config) -> OptimizerSettings:
  """Validates `config.optimizer`.

  Raises:
    ValueError: a missing field, an unknown name or an impossible value, naming the field.
  """
  get = lambda field: required(opt_config, field, 'optimizer.')  # noqa: E731
  name = choice('optimizer.name', get('name'), OPTIMIZERS)
  learning_rate = number('optimizer.learning_rate', get('learning_rate'), low=0, low_ok=False)
  weight_decay = number('optimizer.weight_decay', get('weight_decay'), low=0)
  warmup_epochs = number('optimizer.warmup_epochs', get('warmup_epochs'), low=0)
  schedule = choice('optimizer.schedule', get('schedule'), SCHEDULES)
  nesterov = get('nesterov')
  if not isinstance(nesterov, bool):
    raise ValueError(f'optimizer.nesterov={nesterov!r} is invalid; it must be True or False.')
  momentum = 0.0
  if name in ('sgd', 'momentum', 'nesterov'):
    momentum = number('optimizer.momentum', get('momentum'), low=0, high=1)
    if name != 'sgd' and momentum == 0:
      raise ValueError(f'optimizer.momentum=0 is invalid for optimizer.name={name!r}; set it in '
                       "(0, 1) or use optimizer.name='sgd'.")
    nesterov = nesterov or name == 'nesterov'
    if nesterov and momentum == 0:
      raise ValueError('optimizer.nesterov=True needs optimizer.momentum in (0, 1).')
  elif nesterov:
    raise ValueError(f'optimizer.nesterov=True is only for SGD; optimizer.name={name!r} '
                     'does not use it.')
  decay_epochs = get('decay_epochs')
  if isinstance(decay_epochs, (int, float)):
    decay_epochs = (decay_epochs,)
  decay_epochs = tuple(number('optimizer.decay_epochs', e, low=0, low_ok=False)
                       for e in decay_epochs or ())
  if schedule == 'step' and not decay_epochs:
    raise ValueError("optimizer.decay_epochs is empty; schedule='step' needs the epochs at "
                     'which to multiply the learning rate by optimizer.decay_factor.')
  decay_factor = number('optimizer.decay_factor', get('decay_factor'), low=0, low_ok=False)
  return OptimizerSettings(name=name, learning_rate=learning_rate, momentum=momentum,
                           nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                           warmup_epochs=warmup_epochs, decay_epochs=decay_epochs,
                           decay_factor=decay_factor)


def read_regularizer(reg_config) -> RegularizerSettings:
  """Validates `config.regularizer` (a deprecated name warns once and is mapped).

  Raises:
    ValueError: a missing field, an unknown name or an impossible value, naming the field.
  """
  get = lambda field: required(reg_config, field, 'regularizer.')  # noqa: E731
  return RegularizerSettings(
      name=regularizers.validate_name(get('name')),
      strength=number('regularizer.strength', get('strength'), low=0),
      every_k=integer('regularizer.every_k', get('every_k'), low=1),
      start_epoch=number('regularizer.start_epoch', get('start_epoch'), low=0))


def read_measure(measure_config) -> MeasureSettings:
  """Validates `config.measure`.

  Raises:
    ValueError: a missing field, an unknown estimator or an impossible value, naming the field.
  """
  get = lambda field: required(measure_config, field, 'measure.')  # noqa: E731
  periods = {f: integer(f'measure.{f}', get(f), low=0, off_ok=True)
             for f in ('every_epochs', 'every_steps', 'hessian_every_epochs',
                       'eigen_every_epochs')}
  counts = {f: integer(f'measure.{f}', get(f), low=1)
            for f in ('num_examples', 'hessian_probes', 'hessian_num_examples', 'eigen_k')}
  counts['eigen_iterations'] = integer('measure.eigen_iterations', get('eigen_iterations'),
                                        low=counts['eigen_k'])
  estimator = choice('measure.fisher_estimator', get('fisher_estimator'), FISHER_ESTIMATORS)
  per_leaf = get('per_leaf')
  if not isinstance(per_leaf, bool):
    raise ValueError(f'measure.per_leaf={per_leaf!r} is invalid; it must be True or False.')
  until = number('measure.every_steps_until_epoch', get('every_steps_until_epoch'), low=0)
  return MeasureSettings(fisher_estimator=estimator, per_leaf=per_leaf,
                         every_steps_until_epoch=until, **periods, **counts)


def read_stop(stop_config) -> StopSettings:
  """Validates `config.stop` (the fit target).

  Raises:
    ValueError: a missing field or an impossible value, naming the field.
  """
  get = lambda field: required(stop_config, field, 'stop.')  # noqa: E731
  target = number('stop.train_accuracy', get('train_accuracy'), low=0)
  if target > 1:
    raise ValueError(f'stop.train_accuracy={target!r} is invalid; it is a training accuracy '
                     'in (0, 1], or 0 to train num_epochs epochs.')
  return StopSettings(train_accuracy=target,
                      extra_epochs=integer('stop.extra_epochs', get('extra_epochs'), low=0))


def read_model(model_config) -> ModelSettings:
  """Validates `config.model` (also a run's recorded config.json: analysis.spectrum reads it).

  Raises:
    ValueError: `model.name` is missing or not a registered model, naming the choices.
  """
  model = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  name = model.pop('name', None)
  from fisher_jax import models  # pylint: disable=g-import-not-at-top  (the model zoo)
  if name not in models.available_models():
    raise ValueError(f'model.name={name!r} is unknown; choose one of '
                     f'{models.available_models()}.')
  return ModelSettings(name=name, kwargs=model)


def read(config) -> Settings:
  """Validates a whole run config (`configs/*.py`'s `get_config()`), once, at start-up.

  Raises:
    ValueError: a missing field, an unknown name (dataset, model, optimizer, schedule,
      regularizer, estimator) or an impossible value, in one sentence naming the field.
  """
  get = lambda field: required(config, field, '')  # noqa: E731
  # pylint: disable-next=g-import-not-at-top  (TensorFlow only for a whole run)
  from fisher_jax import data
  init_from = get('init_from')
  seed = get('seed')
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed={seed!r} is invalid; use a non-negative integer.')
  return Settings(
      seed=seed,
      batch_size=integer('batch_size', get('batch_size'), low=1),
      num_epochs=integer('num_epochs', get('num_epochs'), low=1),
      dataset=data.read_settings(get('dataset')),
      model=read_model(get('model')),
      optimizer=read_optimizer(get('optimizer')),
      regularizer=read_regularizer(get('regularizer')),
      measure=read_measure(get('measure')),
      stop=read_stop(get('stop')),
      init_from=InitFromSettings(workdir=required(init_from, 'workdir', 'init_from.') or None,
                                 step=required(init_from, 'step', 'init_from.')),
      eval_every_epochs=integer('eval_every_epochs', get('eval_every_epochs'), low=0,
                                 off_ok=True),
      checkpoint_every_epochs=integer('checkpoint_every_epochs',
                                       get('checkpoint_every_epochs'), low=0, off_ok=True),
      log_every_steps=integer('log_every_steps', get('log_every_steps'), low=0, off_ok=True),
      checkpoint_keep=integer('checkpoint_keep', get('checkpoint_keep'), low=1),
      guard_nonfinite=choice('guard.nonfinite', required(get('guard'), 'nonfinite', 'guard.'),
                              guard.NONFINITE_MODES))
