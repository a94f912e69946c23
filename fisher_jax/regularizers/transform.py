"""The penalty as an optax gradient transformation: `add_penalty_gradient` and its state.

`add_penalty_gradient(strength, every_k=..., start_step=...)` adds `strength * grad P(params)`
to the updates, P a penalty whose value and gradient the caller hands over as the extra
argument `penalty_fn: params -> (value, grads)` (`regularizers.make_penalty_fn`). It composes
with any optax optimizer:

```
tx = optax.chain(regularizers.add_penalty_gradient(0.1, every_k=10), optax.adam(1e-3))
opt_state = tx.init(params)
...  # in the step (one device's view):
penalty_fn = regularizers.make_penalty_fn('fp', logits_fn, inputs, labels, rng=step_rng,
                                          axis_name='data')
updates, opt_state = tx.update(grads, opt_state, params, penalty_fn=penalty_fn)
params = optax.apply_updates(params, updates)
regularizers.latest_penalty(opt_state)   # [] for logging regularizer/penalty
```

With `every_k > 1` the penalty is recomputed on some steps only. By default the transformation
decides on the device (`lax.cond`), so one compiled step serves all steps. On CPU, where XLA runs
convolutions inside a `lax.cond` branch several times slower, let the host decide instead: compile
the step twice, with `tx.update(..., recompute_penalty=True)` and `recompute_penalty=False`, and
pick one per step with `recompute_due` (the trainer's
`fisher_jax.training.optim.make_recompute_fn` does this from the validated settings).
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import optax


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
  """Whether the update after `count` updates recomputes the penalty (host ints or arrays).

  The cadence "every `every_k` from `start_step`" (`fisher_jax.training.cadence.is_due` with
  `every=every_k >= 1`, written out here so that the library does not import the trainer):
  `count >= start_step` and `(count - start_step) % every_k == 0`.
  """
  return (count >= start_step) & ((count - start_step) % every_k == 0)


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
    `recompute_due(t, every_k=..., start_step=...)` (or the trainer's `make_recompute_fn`):
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
