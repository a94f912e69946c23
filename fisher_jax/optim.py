"""Optimizers, learning-rate schedules and the penalty transformation (optax).

`make_optimizer(opt, reg, steps_per_epoch=..., num_epochs=...)` returns the optax
transformation the training loop uses, from the validated settings of `config.optimizer` and
`config.regularizer` (`fisher_jax.settings`): `add_penalty_gradient` for the regularizer (unless
its name is 'none') chained with the optimizer and its schedule. It always accepts the extra argument
`penalty_fn`, so one step function serves every regularizer:

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
optim.latest_penalty(opt_state)   # [] for logging regularizer/penalty
```

`add_penalty_gradient` composes with any optax optimizer:
`optax.chain(optim.add_penalty_gradient(0.1, every_k=10), optax.adam(1e-3))`.

With `every_k > 1` the penalty is recomputed on some steps only. By default the transformation
decides on the device (`lax.cond`), so one compiled step serves all steps. On CPU, where XLA runs
convolutions inside a `lax.cond` branch several times slower, let the host decide instead: compile
the step twice, with `tx.update(..., recompute_penalty=True)` and `recompute_penalty=False`, and
pick one per step with `make_recompute_fn(reg, steps_per_epoch)(updates_done)`; the training
loop (`train.py`) does this.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import optax

from fisher_jax import cadence
from fisher_jax import settings as settings_lib

OPTIMIZERS = settings_lib.OPTIMIZERS
SCHEDULES = settings_lib.SCHEDULES


class PenaltyState(NamedTuple):
  """State of `add_penalty_gradient`; identical on every device.

  Attributes:
    count: [] int32, number of updates done.
    recompute: [] bool, whether the next update calls `penalty_fn`.
    value: [] the latest computed penalty value (unscaled; 0 before the first).
    grads: the latest computed penalty gradient (unscaled; zeros before the first), like params.
  """
  count: jax.Array
  recompute: jax.Array
  value: jax.Array
  grads: Any


def recompute_due(count, *, every_k: int, start_step: int):
  """Whether the update after `count` updates recomputes the penalty (host ints or arrays)."""
  return cadence.is_due(count, every_k, start=start_step)


def add_penalty_gradient(strength: Union[float, optax.Schedule], *, every_k: int = 1,
                         start_step: int = 0) -> optax.GradientTransformationExtraArgs:
  """Adds `strength * grad P(params)` to the updates (P a penalty, e.g. the Fisher penalty).

  `update(updates, state, params, *, penalty_fn, recompute_penalty=None)` needs `params` and the
  keyword argument `penalty_fn: params -> (value [], grads like params)` (e.g.
  `regularizers.make_penalty_fn`). With t the number of updates done before this one:

  * t < start_step: updates pass unchanged and `penalty_fn` is not called;
  * t >= start_step and (t - start_step) % every_k == 0: `penalty_fn(params)` is called and its
    value and gradient cached;
  * otherwise the cached gradient is reused and `penalty_fn` is not called;
  * from start_step on, `strength(t) * cached_grads` is added (`strength` a float or a schedule).

  Who decides whether this update recomputes:

  * `recompute_penalty=None` (default): the device, with `lax.cond` on the state's flag; one
    compiled step serves every step. Best on GPU/TPU. On CPU, XLA runs convolutions inside a
    `lax.cond` branch several times slower (github.com/jax-ml/jax/issues/12868).
  * `recompute_penalty=True` / `False` (a Python bool): the caller, on the host, with
    `recompute_due(t, every_k=..., start_step=...)` (or `make_recompute_fn(config, ...)`):
    no `lax.cond`, two compiled steps. `penalty_fn` may be omitted when False. A decision that
    contradicts the schedule turns the updates into NaN, so it cannot go unnoticed.

  Args:
    strength: the penalty's coefficient, a float >= 0 or an optax schedule of the step count.
    every_k: recompute the penalty gradient every `every_k` steps (>= 1).
    start_step: first step with the penalty (>= 0).

  Returns:
    An `optax.GradientTransformationExtraArgs`; chain it before the optimizer.
  """
  if not callable(strength) and strength < 0:
    raise ValueError(f'strength={strength} is negative; the penalty strength must be >= 0.')
  if int(every_k) != every_k or every_k < 1:
    raise ValueError(f'every_k={every_k} is invalid; it must be an integer >= 1.')
  if int(start_step) != start_step or start_step < 0:
    raise ValueError(f'start_step={start_step} is invalid; it must be an integer >= 0.')
  every_k, start_step = int(every_k), int(start_step)
  due = functools.partial(recompute_due, every_k=every_k, start_step=start_step)

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    count = jnp.zeros([], jnp.int32)
    return PenaltyState(count=count, recompute=due(count),
                        value=jnp.zeros([], dtype), grads=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None, *, penalty_fn: Optional[Callable] = None,
                recompute_penalty: Optional[bool] = None, **extra_args):
    del extra_args  # Meant for other transformations of a chain.
    if params is None:
      raise ValueError('add_penalty_gradient needs the parameters: call '
                       'tx.update(grads, state, params, penalty_fn=...).')
    if recompute_penalty is not None and not isinstance(recompute_penalty, bool):
      raise ValueError(f'recompute_penalty={recompute_penalty!r} must be None (decided on the '
                       'device) or a Python bool decided on the host with recompute_due().')
    if penalty_fn is None and recompute_penalty is not False:
      raise ValueError('add_penalty_gradient needs the keyword argument penalty_fn '
                       '(params -> (value, grads)): call '
                       'tx.update(grads, state, params, penalty_fn=...).')

    def recompute(p):
      value, grads = penalty_fn(p)
      return (jnp.asarray(value).astype(state.value.dtype),
              optax.tree_utils.tree_cast_like(grads, state.grads))

    def reuse(_):
      return state.value, state.grads

    if recompute_penalty is None:
      value, grads = lax.cond(state.recompute, recompute, reuse, params)
    else:
      value, grads = (recompute if recompute_penalty else reuse)(params)
      mismatch = state.recompute != recompute_penalty  # Poison a wrong host decision.
      value, grads = jax.tree.map(lambda x: jnp.where(mismatch, jnp.nan, x), (value, grads))
    scale = strength(state.count) if callable(strength) else strength
    scale = jnp.where(state.count >= start_step, scale, 0.0)
    updates = jax.tree.map(lambda u, g: u + (scale * g).astype(u.dtype), updates, grads)
    count = optax.safe_int32_increment(state.count)
    return updates, PenaltyState(count=count, recompute=due(count),
                                 value=value, grads=grads)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _penalty_state(opt_state):
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, PenaltyState))
            if isinstance(s, PenaltyState)]
  if len(states) > 1:
    raise ValueError(f'opt_state holds {len(states)} add_penalty_gradient states; expected one.')
  return states[0] if states else None


def penalty_due(opt_state) -> jax.Array:
  """[] bool: whether the next update recomputes the penalty (False without a penalty)."""
  state = _penalty_state(opt_state)
  return jnp.asarray(False) if state is None else state.recompute


def latest_penalty(opt_state) -> jax.Array:
  """[] the latest computed penalty value, unscaled (0 before the start or without a penalty)."""
  state = _penalty_state(opt_state)
  return jnp.zeros([], jnp.float32) if state is None else state.value


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
  return add_penalty_gradient(reg.strength, every_k=reg.every_k,
                              start_step=_start_step(reg, steps_per_epoch))


def make_recompute_fn(reg: settings_lib.RegularizerSettings,
                      steps_per_epoch: int) -> Callable[[int], bool]:
  """Host-side `count -> bool`: whether the update after `count` updates recomputes the penalty
  of `regularizer` (always False for 'none'); for `recompute_penalty=`."""
  if reg.name == 'none':
    return lambda count: False
  start_step = _start_step(reg, steps_per_epoch)
  return lambda count: bool(recompute_due(int(count), every_k=reg.every_k,
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
