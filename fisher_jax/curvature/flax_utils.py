"""Turning a flax model into the per-example `logits_fn(params, inputs)` of the curvature API.

Per-example quantities (‖∇θ CE(x_i, y_i)‖², Tr(F)) need logits that depend on example i alone.
BatchNorm in training mode normalizes with the statistics of the batch, which couples the
examples; in evaluation mode it uses the running averages (`batch_stats`) and every example is
processed independently. `make_logits_fn` therefore always applies the model with `train=False`.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax


def make_logits_fn(model: nn.Module, batch_stats: Optional[Any] = None) -> Callable[..., jax.Array]:
  """The per-example logits function of a flax model, with BatchNorm in evaluation mode.

  Every model of fisher_jax is called `model.apply(variables, x, train=bool)`.

  Args:
    model: a flax.linen Module.
    batch_stats: the model's `batch_stats` collection (BatchNorm running averages), or None for
      a model without BatchNorm. Inside `jax.jit`, pass the traced `batch_stats` (build the
      function inside the jitted function) so XLA does not constant-fold them.

  Returns:
    `logits_fn(params, inputs [B, ...]) -> [B, C]` =
    `model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=False)`.

  Example:
    >>> @jax.jit
    ... def measure(params, batch_stats, images, rng):
    ...   logits_fn = make_logits_fn(model, batch_stats)
    ...   return fisher_trace(logits_fn, params, images, estimator='sampled', rng=rng)
  """
  def logits_fn(params, inputs):
    variables = {'params': params}
    if batch_stats is not None:
      variables['batch_stats'] = batch_stats
    return model.apply(variables, inputs, train=False)

  return logits_fn
