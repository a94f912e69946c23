"""The training state and its creation.

`TrainState` holds everything a run needs to continue exactly: parameters, BatchNorm running
averages, optimizer state, the step counter and the run's base RNG key. Per-step randomness is
`jax.random.fold_in(rng, step)`, so the key itself never changes and a resumed run draws the same
numbers as an uninterrupted one.
"""

from typing import Any, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Replicated training state (a pytree; checkpointed whole).

  Attributes:
    step: int32 scalar, number of optimizer updates done.
    params: model parameters.
    batch_stats: BatchNorm running averages ({} for models without BatchNorm).
    opt_state: optax state of the optimizer (and the penalty transformation).
    rng: uint32 [2] base PRNG key of the run.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array

  def variables(self):
    """The flax variables dict {'params', 'batch_stats'?} for `model.apply`."""
    if self.batch_stats:
      return {'params': self.params, 'batch_stats': self.batch_stats}
    return {'params': self.params}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: Tuple[int, ...], rng: jax.Array) -> TrainState:
  """Initializes a model and its optimizer.

  Args:
    model: a flax module called as `model.apply(variables, x, train=...)`.
    tx: the optimizer.
    input_shape: one example's shape (H, W, C).
    rng: uint32 [2] PRNG key; split into the init key and the run's base key.

  Returns:
    A TrainState at step 0. Call under `jax.jit` with replicated out_shardings to place it.
  """
  init_rng, run_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1,) + tuple(input_shape), jnp.float32),
                         train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), rng=run_rng)
