"""Curvature regularizers: penalty values and their parameter gradients.

With B examples in the (global) mini-batch, CE_i(y) = -log p_theta(y | x_i), sampled labels
y^_i ~ p_theta(. | x_i) and uniform random labels y~_i (both constants: no gradient flows
through the sampling), the penalties of `config.regularizer.name` are

| name       | penalty P(theta)                                  |
| ---------- | ------------------------------------------------- |
| `none`     | 0                                                 |
| `fp`       | || (1/B) sum_i grad_theta CE_i(y^_i) ||^2         |
| `fp_exact` | (1/B) sum_i || grad_theta CE_i(y^_i) ||^2         |
| `gp`       | || (1/B) sum_i grad_theta CE_i(y_i) ||^2          |
| `gpr`      | || (1/B) sum_i grad_theta CE_i(y~_i) ||^2         |
| `gpx`      | (1/B) sum_i || grad_x CE_i(y_i) ||^2  (input gradient of example i) |

Sampled labels are `jax.random.categorical(rng, logits)` over the logits [B, C] of the whole
global batch; random labels are `jax.random.randint(rng, (B,), 0, C)`.

Gradients are computed forward-over-reverse (`jax.linearize` of a gradient, then one
Jacobian-vector product), never by reverse-mode through a gradient:

* `fp`, `gp`, `gpr`: g = grad L(theta) with L = (1/B) sum_i CE_i(labels) and the labels fixed;
  grad P = 2 H g with H the Hessian of L. `jax.linearize` returns g together with the linear map
  v -> H v, so g costs one forward and one backward pass, and H g one tangent pass.
* `fp_exact`: grad P = (2/B) sum_i H_i g_i, per example (vmap) with g_i = grad_theta CE_i.
* `gpx`: grad P = (2/B) sum_i (d^2 CE_i / d theta d x_i) u_i with u_i = grad_x CE_i: the
  derivative of grad_theta along the inputs in the direction u (linearize in x).

Data parallelism. With `axis_name` given, the call runs inside `jax.shard_map` (or any mapped
context) over that mesh axis, each device holding an equal slice of the global batch (in batch
order: device d holds rows d*b .. d*b+b-1), and `rng` the same on every device. The value and
the gradient are then those of the GLOBAL batch, identical on every device: g is `pmean`ed
before the Hessian-vector product, per-example means are `pmean`ed, and sampled/random labels
equal those one device would draw for the whole batch (logits are all-gathered for sampling).

How a training step uses this module (one device's view, inside `shard_map` over 'data'):

```
tx = optim.make_optimizer(config, steps_per_epoch)   # chains optim.add_penalty_gradient
penalty_fn = regularizers.make_penalty_fn(config.regularizer.name, logits_fn, inputs, labels,
                                          rng=step_rng, axis_name='data')
grads = lax.pmean(local_loss_grads, 'data')
updates, opt_state = tx.update(grads, opt_state, params, penalty_fn=penalty_fn)
penalty_value = optim.latest_penalty(opt_state)       # logged as regularizer/penalty
```

The transformation calls `penalty_fn(params)` only on the steps where the penalty is recomputed
(`every_k`). A step that wants the loss gradient and the penalty to share one forward pass uses
`loss_and_penalty_grads` under its own `lax.cond` (see its docstring).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

from fisher_jax import losses

NAMES = ('none', 'fp', 'fp_exact', 'gp', 'gpr', 'gpx')
# Penalties summed over per-example terms: their logits_fn must be per-example independent
# (BatchNorm in eval mode); the others may use the training forward pass.
PER_EXAMPLE = ('fp_exact', 'gpx')

_SAMPLED = ('fp', 'fp_exact')
_GRADIENT_NORM = ('fp', 'gp', 'gpr')

LogitsFn = Callable[[Any, jax.Array], jax.Array]


class LossAndPenalty(NamedTuple):
  """Result of `loss_and_penalty_grads` (global-batch values when `axis_name` is given).

  Attributes:
    loss: [] mean cross-entropy with the true labels.
    loss_grads: gradient of `loss`, shaped like params.
    logits: [b, C] this device's logits (for accuracy).
    penalty: [] the penalty value P(theta).
    penalty_grads: grad_theta P, shaped like params.
  """
  loss: jax.Array
  loss_grads: Any
  logits: jax.Array
  penalty: jax.Array
  penalty_grads: Any


def validate_name(name: str) -> None:
  """Raises a ValueError naming `regularizer.name` when `name` is not a regularizer."""
  if name not in NAMES:
    raise ValueError(f'regularizer.name={name!r} is unknown; choose one of {list(NAMES)}.')


def _mean_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the rows of the per-example cross-entropy -log p(y|x); logits [b, C]."""
  return losses.cross_entropy(logits, labels).mean()


def _pmean(tree, axis_name: Optional[str]):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def _as_varying(tree, axis_name: Optional[str]):
  """Marks replicated arrays as device-varying along `axis_name` (no data movement).

  Inside `shard_map` with `check_vma=True`, the gradient with respect to a replicated
  (invariant) argument comes back already summed over the devices. Differentiating with
  respect to a varying copy keeps every gradient local, so that the explicit `pmean`s below are
  the only reductions, with or without `check_vma`.
  """
  if axis_name is None:
    return tree

  def cast(x):
    aval = jax.typeof(x)
    axis_type = getattr(aval, 'manual_axis_type', None)
    varying = axis_type.varying if axis_type is not None else getattr(aval, 'vma', frozenset())
    return x if axis_name in varying else lax.pcast(x, axis_name, to='varying')

  return jax.tree.map(cast, tree)


def _local_rows(x: jax.Array, axis_name: Optional[str], b: int) -> jax.Array:
  """This device's rows [b, ...] of a global-batch array [B, ...]."""
  if axis_name is None:
    return x
  return lax.dynamic_slice_in_dim(x, lax.axis_index(axis_name) * b, b)


def _sampled_labels(rng, logits: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """y^ = categorical(rng, global logits [B, C]), this device's rows [b]; no gradient."""
  b = logits.shape[0]
  logits = lax.stop_gradient(logits)
  if axis_name is not None:
    logits = lax.all_gather(logits, axis_name, tiled=True)
  return _local_rows(jax.random.categorical(rng, logits), axis_name, b)


def _random_labels(rng, logits: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """y~ = randint(rng, (B,), 0, C), this device's rows [b]."""
  b, num_classes = logits.shape
  n = b if axis_name is None else b * lax.axis_size(axis_name)
  return _local_rows(jax.random.randint(rng, (n,), 0, num_classes), axis_name, b)


def _penalty_labels_fn(name: str, labels: jax.Array, rng, axis_name: Optional[str]):
  """logits [b, C] -> the labels [b] the penalty `name` uses (constants)."""
  if name in _SAMPLED or name == 'gpr':
    if rng is None:
      raise ValueError(f'regularizer.name={name!r} draws labels at random and needs rng=; '
                       'pass a PRNG key (the same on every device).')
    draw = _sampled_labels if name in _SAMPLED else _random_labels
    return lambda logits: draw(rng, logits, axis_name)
  return lambda logits: labels


def _gradient_norm(name, logits_fn, params, inputs, labels, rng, axis_name, with_loss):
  """`fp`, `gp`, `gpr`: P = ||g||^2 and grad P = 2 H g, forward-over-reverse."""
  penalty_labels = _penalty_labels_fn(name, labels, rng, axis_name)

  def local_grad(p):
    # One forward pass; the loss gradient (true labels) and g pull back through it.
    logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), p)
    (g,) = pullback(jax.grad(_mean_ce)(logits, penalty_labels(logits)))
    if not with_loss:
      return g, None
    loss, loss_cotangent = jax.value_and_grad(_mean_ce)(logits, labels)
    loss_grads = g if name == 'gp' else pullback(loss_cotangent)[0]
    return g, (loss, loss_grads, logits)

  g_local, hvp_local, aux = jax.linearize(local_grad, _as_varying(params, axis_name),
                                          has_aux=True)
  g = _pmean(g_local, axis_name)
  value = optax.tree_utils.tree_vdot(g, g)
  hg = _pmean(hvp_local(_as_varying(g, axis_name)), axis_name)
  grads = jax.tree.map(lambda h: 2 * h, hg)
  return value, grads, aux


def _gradient_norm_value(name, logits_fn, params, inputs, labels, rng, axis_name):
  penalty_labels = _penalty_labels_fn(name, labels, rng, axis_name)
  params = _as_varying(params, axis_name)
  logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), params)
  (g,) = pullback(jax.grad(_mean_ce)(logits, penalty_labels(logits)))
  g = _pmean(g, axis_name)
  return optax.tree_utils.tree_vdot(g, g)


def _per_example_grad_fn(logits_fn, inputs_i, label_i):
  """theta -> grad_theta CE(x_i, y_i) for one example (inputs_i without the batch axis)."""
  return jax.grad(lambda p: _mean_ce(logits_fn(p, inputs_i[None]), label_i[None]))


def _fp_exact(logits_fn, params, inputs, labels, rng, axis_name, with_loss):
  """(1/B) sum_i ||g_i||^2 and its gradient (2/B) sum_i H_i g_i (vmap of linearize)."""
  params = _as_varying(params, axis_name)
  logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), params)
  sampled = _sampled_labels(rng, logits, axis_name)

  def per_example(inputs_i, label_i):
    g_i, hvp_i = jax.linearize(_per_example_grad_fn(logits_fn, inputs_i, label_i), params)
    return optax.tree_utils.tree_vdot(g_i, g_i), hvp_i(g_i)

  sq_norms, hg = jax.vmap(per_example)(inputs, sampled)
  value = _pmean(sq_norms.mean(), axis_name)
  grads = _pmean(jax.tree.map(lambda h: 2 * h.mean(0), hg), axis_name)
  aux = None
  if with_loss:
    loss, loss_cotangent = jax.value_and_grad(_mean_ce)(logits, labels)
    aux = (loss, pullback(loss_cotangent)[0], logits)
  return value, grads, aux


def _fp_exact_value(logits_fn, params, inputs, labels, rng, axis_name):
  del labels
  params = _as_varying(params, axis_name)
  sampled = _sampled_labels(rng, logits_fn(params, inputs), axis_name)
  per_example = lambda x_i, y_i: optax.tree_utils.tree_norm(  # noqa: E731
      _per_example_grad_fn(logits_fn, x_i, y_i)(params), squared=True)
  return _pmean(jax.vmap(per_example)(inputs, sampled).mean(), axis_name)


def _summed_ce(logits_fn, params, inputs, labels):
  return losses.cross_entropy(logits_fn(params, inputs), labels).sum()


def _check_floating_inputs(inputs):
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise ValueError(f"regularizer.name='gpx' differentiates the inputs, which are "
                     f'{inputs.dtype}; pass floating-point (normalized) inputs.')


def _gpx(logits_fn, params, inputs, labels, axis_name, with_loss):
  """(1/B) sum_i ||u_i||^2, u_i = grad_x CE_i, and its gradient (2/B) (d grad_theta/dx) u."""
  _check_floating_inputs(inputs)
  params = _as_varying(params, axis_name)
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
  value = _pmean(jnp.sum(u * u) / b, axis_name)
  grads = _pmean(jax.tree.map(lambda h: 2 * h / b, dtheta_grad_dx(u)), axis_name)
  aux = None
  if with_loss:
    aux = (loss_sum / b, jax.tree.map(lambda h: h / b, g_theta), logits)
  return value, grads, aux


def _gpx_value(logits_fn, params, inputs, labels, axis_name):
  _check_floating_inputs(inputs)
  params = _as_varying(params, axis_name)
  u = jax.grad(lambda x: _summed_ce(logits_fn, params, x, labels))(inputs)
  return _pmean(jnp.sum(u * u) / inputs.shape[0], axis_name)


def _value_grads_aux(name, logits_fn, params, inputs, labels, rng, axis_name, with_loss):
  validate_name(name)
  if name in _GRADIENT_NORM:
    return _gradient_norm(name, logits_fn, params, inputs, labels, rng, axis_name, with_loss)
  if name == 'fp_exact':
    _penalty_labels_fn(name, labels, rng, axis_name)  # Checks rng.
    return _fp_exact(logits_fn, params, inputs, labels, rng, axis_name, with_loss)
  if name == 'gpx':
    return _gpx(logits_fn, params, inputs, labels, axis_name, with_loss)
  # 'none'
  aux = None
  if with_loss:
    logits, pullback = jax.vjp(lambda q: logits_fn(q, inputs), _as_varying(params, axis_name))
    loss, loss_cotangent = jax.value_and_grad(_mean_ce)(logits, labels)
    aux = (loss, pullback(loss_cotangent)[0], logits)
  dtype = jnp.result_type(*jax.tree.leaves(params))
  return jnp.zeros([], dtype), jax.tree.map(jnp.zeros_like, params), aux


def penalty(name: str, logits_fn: LogitsFn, params, inputs: jax.Array, labels: jax.Array, *,
            rng=None, axis_name: Optional[str] = None) -> jax.Array:
  """The penalty value P(theta) of the regularizer `name` (see the module table).

  Differentiable with `jax.grad` (reverse-over-reverse; `penalty_and_grad` is the efficient way
  to get the gradient).

  Args:
    name: one of `NAMES`.
    logits_fn: `(params, inputs [b, ...]) -> logits [b, C]`, per-example independent.
    params: the parameters (any pytree).
    inputs: [b, ...] this device's inputs (floating point for 'gpx').
    labels: [b] int true labels (used by 'gp' and 'gpx').
    rng: PRNG key for the sampled ('fp', 'fp_exact') or random ('gpr') labels; the same key on
      every device.
    axis_name: the mapped mesh axis holding the batch shards, or None on one device.

  Returns:
    [] the penalty of the global batch.
  """
  validate_name(name)
  if name in _GRADIENT_NORM:
    return _gradient_norm_value(name, logits_fn, params, inputs, labels, rng, axis_name)
  if name == 'fp_exact':
    _penalty_labels_fn(name, labels, rng, axis_name)  # Checks rng.
    return _fp_exact_value(logits_fn, params, inputs, labels, rng, axis_name)
  if name == 'gpx':
    return _gpx_value(logits_fn, params, inputs, labels, axis_name)
  return jnp.zeros([], jnp.result_type(*jax.tree.leaves(params)))


def penalty_and_grad(name: str, logits_fn: LogitsFn, params, inputs: jax.Array,
                     labels: jax.Array, *, rng=None, axis_name: Optional[str] = None):
  """The penalty value and its gradient, forward-over-reverse.

  Same arguments as `penalty`.

  Returns:
    `(value [], grads)` with `grads = grad_theta P` shaped like `params`; global-batch values,
    identical on every device when `axis_name` is given.
  """
  value, grads, _ = _value_grads_aux(name, logits_fn, params, inputs, labels, rng, axis_name,
                                     with_loss=False)
  return value, grads


def make_penalty_fn(name: str, logits_fn: LogitsFn, inputs: jax.Array, labels: jax.Array, *,
                    rng=None, axis_name: Optional[str] = None):
  """`params -> (value, grads)` of `penalty_and_grad` for this batch: the `penalty_fn` argument
  of `optim.add_penalty_gradient`'s update."""
  validate_name(name)
  return lambda params: penalty_and_grad(name, logits_fn, params, inputs, labels, rng=rng,
                                         axis_name=axis_name)


def loss_and_penalty_grads(name: str, logits_fn: LogitsFn, params, inputs: jax.Array,
                           labels: jax.Array, *, rng=None,
                           axis_name: Optional[str] = None) -> LossAndPenalty:
  """The mean cross-entropy gradient and the penalty gradient sharing one forward pass.

  The logits are computed once; the loss gradient and the penalty's label gradient are two
  pullbacks of the same `jax.vjp` (for 'gp' they are the same vector; for 'gpx' the loss
  gradient comes out of the penalty's own backward pass). Loss and gradients are global-batch
  means (`pmean`ed) when `axis_name` is given. Use it in the step that recomputes the penalty,
  handing the penalty to the transformation through a constant `penalty_fn` (the host picks
  that step with `optim.recompute_due`; see `optim.add_penalty_gradient`):

  ```
  r = regularizers.loss_and_penalty_grads(name, logits_fn, p, x, y, rng=rng, axis_name='data')
  updates, opt_state = tx.update(r.loss_grads, opt_state, p, recompute_penalty=True,
                                 penalty_fn=lambda _: (r.penalty, r.penalty_grads))
  ```

  Same arguments as `penalty`; `logits_fn` must be the training forward pass (a model with
  BatchNorm needs its batch statistics handled by the caller).

  Returns:
    A `LossAndPenalty`.
  """
  value, grads, (loss, loss_grads, logits) = _value_grads_aux(
      name, logits_fn, params, inputs, labels, rng, axis_name, with_loss=True)
  loss, loss_grads = _pmean((loss, loss_grads), axis_name)
  return LossAndPenalty(loss, loss_grads, logits, value, grads)
