"""The curvature penalties: their values and their parameter gradients.

With B examples in the (global) mini-batch, CE_i(y) = -log p_theta(y | x_i), sampled labels
y^_i ~ p_theta(. | x_i) and uniform random labels y~_i (both constants: no gradient flows
through the sampling), the penalties of `config.regularizer.name` are

| name             | penalty P(theta)                                  |
| ---------------- | ------------------------------------------------- |
| `none`           | 0                                                 |
| `fp`             | || (1/B) sum_i grad_theta CE_i(y^_i) ||^2         |
| `fp_per_example` | (1/B) sum_i || grad_theta CE_i(y^_i) ||^2         |
| `gp`             | || (1/B) sum_i grad_theta CE_i(y_i) ||^2          |
| `gpr`            | || (1/B) sum_i grad_theta CE_i(y~_i) ||^2         |
| `gpx`            | (1/B) sum_i || grad_x CE_i(y_i) ||^2  (input gradient of example i) |

The values are the curvature functions': `fp` is `curvature.batch_fisher_trace` and
`fp_per_example` is `curvature.fisher_trace(estimator='sampled')` for the same inputs and rng.

Sampled labels are `jax.random.categorical(rng, logits)` over the logits [B, C] of the whole
global batch; random labels are `jax.random.randint(rng, (B,), 0, C)`. Both, the mean-CE
gradient, the device-varying cast and the global mean come from `fisher_jax.curvature._core`,
which the curvature functions use too.

Gradients are computed forward-over-reverse (`jax.linearize` of a gradient, then one
Jacobian-vector product), never by reverse-mode through a gradient:

* `fp`, `gp`, `gpr`: g = grad L(theta) with L = (1/B) sum_i CE_i(labels) and the labels fixed;
  grad P = 2 H g with H the Hessian of L. `jax.linearize` returns g together with the linear map
  v -> H v, so g costs one forward and one backward pass, and H g one tangent pass.
* `fp_per_example`: grad P = (2/B) sum_i H_i g_i, per example (vmap) with g_i = grad_theta CE_i.
* `gpx`: grad P = (2/B) sum_i (d^2 CE_i / d theta d x_i) u_i with u_i = grad_x CE_i: the
  derivative of grad_theta along the inputs in the direction u (linearize in x).

Data parallelism. Inside `jax.shard_map`, each device holds an equal slice of the global batch
(in batch order: device d holds rows d*b .. d*b+b-1) split over the mesh axes `axis_name` names
(None: every manual axis of the enclosing shard_map, the curvature functions' convention), and
`rng` is the same on every device. The value and the gradient are then those of the GLOBAL
batch, identical on every device: g is `pmean`ed before the Hessian-vector product,
per-example means are `pmean`ed, and sampled/random labels equal those one device would draw
for the whole batch (each device draws the global batch's noise and keeps its rows).

How a training step uses this module (one device's view, inside `shard_map` over 'data'): on
the steps where it wants a fresh penalty (every `every_k` steps, say) it computes the penalty
with the loss gradient, sharing one forward pass, and hands it to the transformation
`regularizers.add_penalty_gradient`; on the others it passes nothing and the cached gradient is
reused:

```
(loss, grads, logits), penalty = regularizers.loss_and_penalty_grads(
    'fp', logits_fn, params, inputs, labels, rng=step_rng, axis_name='data')
updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
```

`penalty`, `penalty_and_grad` and `loss_and_penalty_grads` are three views of ONE computation
(`_evaluate`): the value, its gradient and the loss gradient of the same forward pass. Under
`jax.jit` what a view leaves out is dead code, which XLA removes.
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import optax

from fisher_jax import losses
from fisher_jax.curvature import _core

NAMES = ('none', 'fp', 'fp_per_example', 'gp', 'gpr', 'gpx')
# Penalties summed over per-example terms: their logits_fn must be per-example independent
# (BatchNorm in eval mode); the others may use the training forward pass.
PER_EXAMPLE = ('fp_per_example', 'gpx')

_GRADIENT_NORM = ('fp', 'gp', 'gpr')

LogitsFn = Callable[[Any, jax.Array], jax.Array]


def validate_name(name: str) -> str:
  """`name` if it is a regularizer's name.

  Raises:
    ValueError: naming `regularizer.name` when `name` is not a regularizer.
  """
  if name not in NAMES:
    raise ValueError(f'regularizer.name={name!r} is unknown; choose one of {list(NAMES)}.')
  return name


def _mean_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the rows of the per-example cross-entropy -log p(y|x); logits [b, C]."""
  return losses.cross_entropy(logits, labels).mean()


def _penalty_labels(name: str, labels: jax.Array, rng, axes):
  """The labels [b] the penalty `name` uses: an array, or `logits [b, C] -> labels` (drawn)."""
  if name in ('fp', 'fp_per_example', 'gpr'):
    if rng is None:
      raise ValueError(f'regularizer.name={name!r} draws labels at random and needs rng=; '
                       'pass a PRNG key (the same on every device).')
    draw = _core.random_labels if name == 'gpr' else _core.sampled_labels
    return lambda logits: draw(rng, logits, axes)
  return labels


def _loss_aux(logits, pullback, labels):
  """(loss, loss_grads, logits) of this device's rows from a forward pass's pullback."""
  (loss_grads,) = pullback(_core.mean_ce_cotangent(logits, labels))
  return _mean_ce(logits, labels), loss_grads, logits


def _gradient_norm(name, logits_fn, params, inputs, labels, rng, axes):
  """`fp`, `gp`, `gpr`: P = ||g||^2 and grad P = 2 H g, forward-over-reverse."""
  penalty_labels = _penalty_labels(name, labels, rng, axes)

  def local_grad(p):
    # One forward pass; the loss gradient (true labels) and g pull back through it.
    g, logits, pullback = _core.mean_ce_grad(logits_fn, p, inputs, penalty_labels)
    if name == 'gp':
      return g, (_mean_ce(logits, labels), g, logits)
    return g, _loss_aux(logits, pullback, labels)

  g_local, hvp_local, aux = jax.linearize(local_grad, _core.as_varying(params, axes),
                                          has_aux=True)
  g = _core.global_mean(g_local, axes)
  value = jnp.asarray(optax.tree_utils.tree_vdot(g, g))
  hg = _core.global_mean(hvp_local(_core.as_varying(g, axes)), axes)
  grads = jax.tree.map(lambda h: 2 * h, hg)
  return value, grads, aux


def _fp_per_example(logits_fn, params, inputs, labels, rng, axes):
  """(1/B) sum_i ||g_i||^2 and its gradient (2/B) sum_i H_i g_i (vmap of linearize)."""
  params = _core.as_varying(params, axes)
  logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), params)
  sampled = _core.sampled_labels(rng, logits, axes)

  def per_example(inputs_i, label_i):
    g_i, hvp_i = jax.linearize(
        lambda p: _core.mean_ce_grad(logits_fn, p, inputs_i[None], label_i[None])[0], params)
    return optax.tree_utils.tree_vdot(g_i, g_i), hvp_i(g_i)

  sq_norms, hg = jax.vmap(per_example)(inputs, sampled)
  value = _core.global_mean(jnp.mean(sq_norms), axes)
  grads = _core.global_mean(jax.tree.map(lambda h: 2 * h.mean(0), hg), axes)
  return value, grads, _loss_aux(logits, pullback, labels)


def _check_floating_inputs(inputs):
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise ValueError(f"regularizer.name='gpx' differentiates the inputs, which are "
                     f'{inputs.dtype}; pass floating-point (normalized) inputs.')


def _gpx(logits_fn, params, inputs, labels, axes):
  """(1/B) sum_i ||u_i||^2, u_i = grad_x CE_i, and its gradient (2/B) (d grad_theta/dx) u."""
  _check_floating_inputs(inputs)
  params = _core.as_varying(params, axes)
  b = inputs.shape[0]

  def theta_grad(x):
    # Summed CE: the input gradient of row i is grad_x CE_i (examples are independent).
    def summed_ce(p, x):
      logits = logits_fn(p, x)
      return losses.cross_entropy(logits, labels).sum(), logits

    (loss_sum, logits), (g_theta, u) = jax.value_and_grad(
        summed_ce, argnums=(0, 1), has_aux=True)(params, x)
    return g_theta, (u, loss_sum, g_theta, logits)

  _, dtheta_grad_dx, (u, loss_sum, g_theta, logits) = jax.linearize(theta_grad, inputs,
                                                                    has_aux=True)
  value = _core.global_mean(jnp.sum(u * u) / b, axes)
  grads = _core.global_mean(jax.tree.map(lambda h: 2 * h / b, dtheta_grad_dx(u)), axes)
  return value, grads, (loss_sum / b, jax.tree.map(lambda h: h / b, g_theta), logits)


def _evaluate(name, logits_fn, params, inputs, labels, rng, axis_name):
  """The one computation behind `penalty`, `penalty_and_grad` and `loss_and_penalty_grads`.

  Returns:
    `(value, grads, (loss, loss_grads, logits))`: the penalty of the global batch and its
    gradient, and this device's mean cross-entropy at the true labels, its gradient (both not
    yet averaged over devices) and its logits [b, C], all from the penalty's forward pass.
  """
  name = validate_name(name)
  axes = _core.batch_axes(axis_name)
  if name in _GRADIENT_NORM:
    return _gradient_norm(name, logits_fn, params, inputs, labels, rng, axes)
  if name == 'fp_per_example':
    _penalty_labels(name, labels, rng, axes)  # Checks rng.
    return _fp_per_example(logits_fn, params, inputs, labels, rng, axes)
  if name == 'gpx':
    return _gpx(logits_fn, params, inputs, labels, axes)
  # 'none'
  logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), _core.as_varying(params, axes))
  zero = jnp.zeros([], jnp.result_type(*jax.tree.leaves(params)))
  return zero, jax.tree.map(jnp.zeros_like, params), _loss_aux(logits, pullback, labels)


def penalty(name: str, logits_fn: LogitsFn, params, inputs: jax.Array, labels: jax.Array, *,
            rng=None, axis_name: _core.AxisName = None) -> jax.Array:
  """The penalty value P(theta) of the regularizer `name` (see the module table).

  The values are the curvature functions': 'fp' is `curvature.batch_fisher_trace`,
  'fp_per_example' is `curvature.fisher_trace(estimator='sampled')` (same params, inputs and
  rng), 'gp' and 'gpr' the squared norm of the mean gradient at true and random labels. It is
  `penalty_and_grad`'s value (under `jax.jit` the unused gradient is never computed), and it is
  differentiable with `jax.grad` (reverse-over-reverse; `penalty_and_grad` is the efficient way
  to get the gradient).

  Args:
    name: one of `NAMES`.
    logits_fn: `(params, inputs [b, ...]) -> logits [b, C]`, per-example independent.
    params: the parameters (any pytree).
    inputs: [b, ...] this device's inputs (floating point for 'gpx').
    labels: [b] int true labels (used by 'gp' and 'gpx').
    rng: PRNG key for the sampled ('fp', 'fp_per_example') or random ('gpr') labels; the same
      key on every device.
    axis_name: inside `jax.shard_map`, the mesh axis (or axes) holding the batch shards;
      None: every manual axis of the enclosing shard_map (none outside one).

  Returns:
    [] the penalty of the global batch.
  """
  return jnp.asarray(_evaluate(name, logits_fn, params, inputs, labels, rng, axis_name)[0])


def penalty_and_grad(name: str, logits_fn: LogitsFn, params, inputs: jax.Array,
                     labels: jax.Array, *, rng=None, axis_name: _core.AxisName = None):
  """The penalty value and its gradient, forward-over-reverse.

  Same arguments as `penalty`. The result is what `add_penalty_gradient`'s update takes as
  `penalty=`.

  Returns:
    `(value [], grads)` with `grads = grad_theta P` shaped like `params`; global-batch values,
    identical on every device.
  """
  value, grads, _ = _evaluate(name, logits_fn, params, inputs, labels, rng, axis_name)
  return value, grads


def loss_and_penalty_grads(name: str, logits_fn: LogitsFn, params, inputs: jax.Array,
                           labels: jax.Array, *, rng=None, axis_name: _core.AxisName = None
                           ) -> Tuple[Tuple[jax.Array, Any, jax.Array], Tuple[jax.Array, Any]]:
  """The mean cross-entropy gradient and the penalty gradient sharing one forward pass.

  The logits are computed once; the loss gradient and the penalty's label gradient are two
  pullbacks of the same `jax.vjp` (for 'gp' they are the same vector; for 'gpx' the loss
  gradient comes out of the penalty's own backward pass). A step that computes a fresh penalty
  hands it straight to the transformation:

  ```
  (loss, grads, logits), penalty = regularizers.loss_and_penalty_grads(
      name, logits_fn, params, inputs, labels, rng=rng, axis_name='data')
  updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
  ```

  Same arguments as `penalty`; `logits_fn` must be the training forward pass (a model with
  BatchNorm needs its batch statistics handled by the caller).

  Returns:
    `((loss [], loss_grads, logits [b, C]), (value [], grads))`: the global mean cross-entropy
    at the true labels and its gradient (like params), this device's logits, and
    `penalty_and_grad`'s result.
  """
  value, grads, (loss, loss_grads, logits) = _evaluate(name, logits_fn, params, inputs, labels,
                                                       rng, axis_name)
  loss, loss_grads = _core.global_mean((loss, loss_grads), _core.batch_axes(axis_name))
  return (jnp.asarray(loss), loss_grads, logits), (jnp.asarray(value), grads)
