"""Optimizers and learning-rate schedules from the config (optax).

`make_optimizer(config, steps_per_epoch)` returns the optax transformation the training loop
uses: the optimizer named by `config.optimizer`, with its schedule.
"""

import optax

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')


def make_schedule(opt_config, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  """Learning rate per step: linear warm-up for `warmup_epochs`, then the named schedule.

  'constant' keeps `learning_rate`; 'cosine' decays it to 0 at the end of training; 'step'
  multiplies it by `decay_factor` at each epoch in `decay_epochs`.
  """
  base = opt_config.learning_rate
  total = max(int(num_epochs * steps_per_epoch), 1)
  warmup = int(round(opt_config.get('warmup_epochs', 0) * steps_per_epoch))
  name = opt_config.get('schedule', 'constant')
  if name == 'constant':
    main = optax.constant_schedule(base)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1))
  elif name == 'step':
    boundaries = {int(e * steps_per_epoch) - warmup: opt_config.get('decay_factor', 0.1)
                  for e in opt_config.get('decay_epochs', ())}
    main = optax.piecewise_constant_schedule(base, boundaries)
  else:
    raise ValueError(f'optimizer.schedule={name!r} is unknown; choose one of {list(SCHEDULES)}.')
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), main], boundaries=[warmup])


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer` with its schedule.

  `weight_decay` is L2 regularization added to the gradient (coupled, as in the study's SGD
  runs); for 'adamw' it is the decoupled decay.
  """
  opt = config.optimizer
  lr = make_schedule(opt, steps_per_epoch, config.num_epochs)
  name = opt.name
  wd = opt.get('weight_decay', 0.0)
  if name in ('sgd', 'momentum', 'nesterov'):
    momentum = opt.get('momentum', 0.0) or None
    if name == 'sgd' and momentum is None:
      base = optax.sgd(lr)
    else:
      base = optax.sgd(lr, momentum=momentum or 0.9,
                       nesterov=(name == 'nesterov') or opt.get('nesterov', False))
  elif name == 'adam':
    base = optax.adam(lr)
  elif name == 'adamw':
    return optax.adamw(lr, weight_decay=wd)
  else:
    raise ValueError(f'optimizer.name={name!r} is unknown; choose one of {list(OPTIMIZERS)}.')
  if wd:
    return optax.chain(optax.add_decayed_weights(wd), base)
  return base
