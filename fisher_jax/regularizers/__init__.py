"""Curvature regularizers: the penalties and the optax transformation that adds one.

  value = regularizers.penalty('fp', logits_fn, params, inputs, labels, rng=rng)
  value, grads = regularizers.penalty_and_grad('fp', logits_fn, params, inputs, labels, rng=rng)
  tx = optax.chain(regularizers.add_penalty_gradient(0.1), optax.sgd(0.1))
  updates, opt_state = tx.update(loss_grads, opt_state, params, penalty=(value, grads))

`penalties` owns the penalty values and gradients (fp, fp_per_example, gp, gpr, gpx);
`transform` owns `add_penalty_gradient`, the gradient transformation that adds
`strength * grad P` to any optax optimizer's updates, P the latest penalty its caller handed
over. Both import jax, flax, optax and numpy only.
"""

from fisher_jax.regularizers.penalties import (NAMES, PER_EXAMPLE, LogitsFn,
                                               loss_and_penalty_grads, penalty, penalty_and_grad,
                                               validate_name)
from fisher_jax.regularizers.transform import PenaltyState, add_penalty_gradient, latest_penalty
