"""The trainer's optimizer: learning-rate schedules and the optax chain built from the settings.

`make_optimizer(opt, reg, steps_per_epoch=..., num_epochs=...)` returns the optax
transformation the training loop uses, from the validated settings of `config.optimizer` and
`config.regularizer` (`fisher_jax.training.settings`): the penalty transformation
`regularizers.add_penalty_gradient` (unless the regularizer's name is 'none') chained with the
optimizer and its schedule. It always accepts the extra argument `penalty_fn`, so one step
function serves every regularizer:

```
run = settings.read(config)
tx = optim.make_optimizer(run.optimizer, run.regularizer, steps_per_epoch=steps_per_epoch,
                          num_epochs=run.num_epochs)
opt_state = tx.init(params)
...  # in the step (one device's view):
penalty_fn = regularizers.make_penalty_fn(config.regularizer.name, logits_fn, inputs, labels,
                                          rng=step_rng, axis_name='data')
updates, opt_state = tx.update(grads, opt_state, params, penalty_fn=penalty_fn)
params = optax.apply_updates(params, updates)
regularizers.latest_penalty(opt_state)   # [] for logging regularizer/penalty
```

`make_recompute_fn(reg, steps_per_epoch)` is the host-side decision of which updates recompute
the penalty (`recompute_penalty=`), for the loop (`fisher_jax.training.loop`) that compiles the
step twice on CPU (see `fisher_jax.regularizers.transform`).
"""

from typing import Callable, Optional

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


def _start_step(reg: settings_lib.RegularizerSettings, steps_per_epoch: int) -> int:
  return cadence.epochs_to_steps(reg.start_epoch, steps_per_epoch)


def make_penalty(reg: settings_lib.RegularizerSettings,
                 steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """`add_penalty_gradient` from `regularizer.{strength, every_k, start_epoch}`."""
  return regularizers.add_penalty_gradient(reg.strength, every_k=reg.every_k,
                                           start_step=_start_step(reg, steps_per_epoch))


def make_recompute_fn(reg: settings_lib.RegularizerSettings,
                      steps_per_epoch: int) -> Callable[[int], bool]:
  """Host-side `count -> bool`: whether the update after `count` updates recomputes the penalty
  of `regularizer` (always False for 'none'); for `recompute_penalty=`."""
  if reg.name == 'none':
    return lambda count: False
  start_step = _start_step(reg, steps_per_epoch)
  return lambda count: bool(regularizers.recompute_due(int(count), every_k=reg.every_k,
                                                       start_step=start_step))


def make_optimizer(opt: settings_lib.OptimizerSettings,
                   reg: Optional[settings_lib.RegularizerSettings], *, steps_per_epoch: int,
                   num_epochs: float) -> optax.GradientTransformationExtraArgs:
  """The optimizer of `opt` (the validated `config.optimizer`), after the penalty of `reg`.

  `weight_decay` is L2 regularization added to the gradient (coupled, as in the study's SGD
  runs); for 'adamw' it is the decoupled decay. The penalty gradient is added to the loss
  gradient before weight decay and the optimizer see it. The result always accepts the extra
  argument `penalty_fn` (ignored without a regularizer or when `reg.name` is 'none').

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
  return optax.chain(make_penalty(reg, steps_per_epoch), base)
