"""The penalty as an optax gradient transformation: `add_penalty_gradient` and its state.

`add_penalty_gradient(strength)` adds `strength * grad P` to the updates, P a penalty whose
value and gradient the CALLER computes, when it chooses, and hands over as the extra argument
`penalty=(value, grads)` (e.g. `regularizers.penalty_and_grad`); on the other steps it passes
nothing and the transformation reuses the gradient it cached. It composes with any optax
optimizer:

```
tx = optax.chain(regularizers.add_penalty_gradient(0.1), optax.adam(1e-3))
opt_state = tx.init(params)
...  # in the step: a fresh penalty every 10 steps, the cached one in between
penalty = None
if t % 10 == 0:
  penalty = regularizers.penalty_and_grad('fp', logits_fn, params, inputs, labels, rng=rng)
updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
params = optax.apply_updates(params, updates)
regularizers.latest_penalty(opt_state)   # [] for logging regularizer/penalty
```

The transformation decides nothing: which steps compute a fresh penalty is the caller's choice
(the trainer's is `fisher_jax.training.cadence.penalty_due`), and whatever the caller chooses,
the update is `grads + strength(t) * (the latest penalty gradient handed over, or zeros)`.
Deciding on the host (a Python `if`, two compiled steps) keeps convolutions out of a `lax.cond`
branch, where XLA:CPU runs them several times slower (github.com/jax-ml/jax/issues/12868).
"""

from typing import Any, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax


class PenaltyState(NamedTuple):
  """State of `add_penalty_gradient`; identical on every device.

  Attributes:
    count: [] int32, number of updates done.
    value: [] the latest penalty value handed over (unscaled; 0 before the first).
    grads: the latest penalty gradient handed over (unscaled; zeros before the first), like
      params.
  """
  count: jax.Array
  value: jax.Array
  grads: Any


def add_penalty_gradient(
    strength: Union[float, optax.Schedule]) -> optax.GradientTransformationExtraArgs:
  """Adds `strength * grad P` to the updates, P a penalty the caller computes (e.g. FP).

  `update(updates, state, params=None, *, penalty=None)`, with t the number of updates done
  before this one:

  * `penalty=(value [], grads like params)`: a fresh penalty and its gradient (e.g.
    `regularizers.penalty_and_grad(...)`); they are cast to the state's dtypes and cached;
  * `penalty=None`: the cached gradient is reused (zeros before the first fresh penalty, so a
    caller that starts the penalty late simply passes nothing until then);
  * in both cases the update is `updates + strength(t) * cached_grads` (`strength` a float or
    an optax schedule of t).

  Nothing the caller passes can make the update non-finite that was not already: there is no
  schedule inside to disagree with.

  Args:
    strength: the penalty's coefficient, a float >= 0 or an optax schedule of the update count.

  Returns:
    An `optax.GradientTransformationExtraArgs`; chain it before the optimizer, so that momentum,
    Adam's scaling and weight decay see the penalized gradient.
  """
  if not callable(strength) and strength < 0:
    raise ValueError(f'strength={strength} is negative; the penalty strength must be >= 0.')

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return PenaltyState(count=jnp.zeros([], jnp.int32), value=jnp.zeros([], dtype),
                        grads=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None,
                *, penalty: Optional[Tuple[jax.Array, Any]] = None, **extra_args):
    del params, extra_args  # Meant for other transformations of a chain.
    if penalty is None:
      value, grads = state.value, state.grads
    else:
      value, grads = penalty
      value = jnp.asarray(value).astype(state.value.dtype)
      grads = optax.tree_utils.tree_cast_like(grads, state.grads)
    scale = strength(state.count) if callable(strength) else strength
    updates = jax.tree.map(lambda u, g: u + (scale * g).astype(u.dtype), updates, grads)
    count = jnp.asarray(optax.safe_int32_increment(state.count))
    return updates, PenaltyState(count=count, value=value, grads=grads)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def latest_penalty(opt_state) -> jax.Array:
  """[] the latest penalty value handed to `add_penalty_gradient`, unscaled.

  0 before the first fresh penalty, or when `opt_state` holds no `add_penalty_gradient` state.

  Raises:
    ValueError: `opt_state` holds more than one `add_penalty_gradient` state.
  """
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, PenaltyState))
            if isinstance(s, PenaltyState)]
  if len(states) > 1:
    raise ValueError(f'opt_state holds {len(states)} add_penalty_gradient states; chain one.')
  return states[0].value if states else jnp.zeros([], jnp.float32)
