"""The trainer's optimizer: learning-rate schedules and the optax chain built from the settings.

`make_optimizer(opt, reg, steps_per_epoch=..., num_epochs=...)` returns the optax
transformation the training loop uses, from the validated settings of `config.optimizer` and
`config.regularizer` (`fisher_jax.training.settings`): the penalty transformation
`regularizers.add_penalty_gradient(reg.strength)` (unless the regularizer's name is 'none')
chained with the optimizer and its schedule. It always accepts the extra argument `penalty`,
so one step function serves every regularizer:

```
settings = settings_lib.read(config)
tx = optim.make_optimizer(settings.optimizer, settings.regularizer,
                          steps_per_epoch=steps_per_epoch, num_epochs=settings.num_epochs)
opt_state = tx.init(params)
...  # in a step that computes a fresh penalty (one device's view):
penalty = regularizers.penalty_and_grad(settings.regularizer.name, logits_fn, params, inputs,
                                        labels, rng=step_rng, axis_name='data')
updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
...  # in a step that reuses the cached penalty gradient:
updates, opt_state = tx.update(grads, opt_state, params)
```

When the penalty is fresh (`every_k`, `start_epoch`) is decided by the training loop with
`fisher_jax.training.cadence.penalty_due`, not here.
"""

from typing import Optional

import optax

from fisher_jax import regularizers
from fisher_jax.training import cadence
from fisher_jax.training import settings as settings_lib

OPTIMIZERS = settings_lib.OPTIMIZERS
SCHEDULES = settings_lib.SCHEDULES


def make_schedule(opt: settings_lib.OptimizerSettings, steps_per_epoch: int,
                  num_epochs: float) -> optax.Schedule:
  """Learning rate per step: linear warm-up from 0 for `warmup_epochs`, then the schedule.

  'constant' keeps `learning_rate`; 'cosine' decays it to 0 at the end of training
  (`num_epochs`); 'step' multiplies it by `decay_factor` at each epoch in `decay_epochs`
  (epochs counted from the start of training, warm-up included).
  """
  base = opt.learning_rate
  total = max(cadence.epochs_to_steps(num_epochs, steps_per_epoch), 1)
  warmup = cadence.epochs_to_steps(opt.warmup_epochs, steps_per_epoch)
  if opt.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, base, warmup, max(total, warmup + 1))
  if opt.schedule == 'constant':
    main = optax.constant_schedule(base)
  else:  # 'step'
    boundaries = {}
    for epoch in opt.decay_epochs:
      step = cadence.epochs_to_steps(epoch, steps_per_epoch)
      boundaries[step] = boundaries.get(step, 1.0) * opt.decay_factor
    main = optax.piecewise_constant_schedule(base, boundaries)
  if warmup <= 0:
    return main
  # join_schedules calls the second schedule with (step - warmup): shift back to absolute steps.
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), lambda step: main(step + warmup)],
      boundaries=[warmup])


def _make_base_optimizer(opt: settings_lib.OptimizerSettings,
                         learning_rate) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer` (without the penalty)."""
  if opt.name in ('sgd', 'momentum', 'nesterov'):
    base = optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov)
  elif opt.name == 'adamw':
    return optax.adamw(learning_rate, weight_decay=opt.weight_decay)  # Decoupled weight decay.
  else:
    base = optax.adam(learning_rate)
  if opt.weight_decay:  # L2 regularization added to the gradient (coupled).
    return optax.chain(optax.add_decayed_weights(opt.weight_decay), base)
  return base


def make_optimizer(opt: settings_lib.OptimizerSettings,
                   reg: Optional[settings_lib.RegularizerSettings], *, steps_per_epoch: int,
                   num_epochs: float) -> optax.GradientTransformationExtraArgs:
  """The optimizer of `opt` (the validated `config.optimizer`), after the penalty of `reg`.

  `weight_decay` is L2 regularization added to the gradient (coupled, as in the study's SGD
  runs); for 'adamw' it is the decoupled decay. The penalty gradient is added to the loss
  gradient before weight decay and the optimizer see it. The result always accepts the extra
  argument `penalty` (ignored without a regularizer or when `reg.name` is 'none').

  Args:
    opt: `settings.read_optimizer(config.optimizer)`.
    reg: `settings.read_regularizer(config.regularizer)`, or None for no penalty.
    steps_per_epoch: optimizer updates per epoch (converts the epochs of the config).
    num_epochs: the run's length (the cosine schedule ends there).

  Raises:
    ValueError: `steps_per_epoch` is not a positive integer.
  """
  if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch={steps_per_epoch} must be an integer >= 1; check '
                     'batch_size against the training set size.')
  base = _make_base_optimizer(opt, make_schedule(opt, steps_per_epoch, num_epochs))
  if reg is None or reg.name == 'none':
    return optax.with_extra_args_support(base)
  return optax.chain(regularizers.add_penalty_gradient(reg.strength), base)
