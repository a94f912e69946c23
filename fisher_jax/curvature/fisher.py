"""Fisher information from per-example gradients: Tr(F) (also per leaf), diag F, Tr(F_B),
the gradient norm.

Notation. `logits_fn(params, inputs [B, ...]) -> z [B, C]` is per-example independent (see
`make_logits_fn` for BatchNorm models); p_i = softmax(z_i); CE(x_i, y) = -log p_i(y) =
logsumexp(z_i) - z_i[y]; g_i(y) = ∇θ CE(x_i, y) = J_iᵀ (p_i - e_y) with J_i = ∂z_i/∂θ [C, P].
The Fisher of the model's predictive distribution, averaged over the B inputs, is

    F = (1/B) Σ_i E_{y ~ p_i} [ g_i(y) g_i(y)ᵀ ] = (1/B) Σ_i J_iᵀ (diag(p_i) - p_i p_iᵀ) J_i,

so Tr(F) = (1/B) Σ_i Σ_c p_i(c) ‖g_i(c)‖² (a mean over inputs of an expectation over classes).

Sampled labels. ŷ_i are `jax.random.categorical(rng, z)` over the whole (global) batch's logits
z [B, C] with the `rng` given: the same (params, inputs, rng) give the same labels whatever
`chunk_size` or the number of devices. The Gumbel noise of `categorical` is drawn up front
(`_core.gumbel_rows`) and the arg-max taken inside the per-example pass, which saves a separate
forward pass over the batch.

Engines. The per-example squared gradients come from one of two passes, with the same numbers
(tested against the dense references on both) and the same gradients with respect to θ:
* 'layers' (`_layers`): each Dense and Conv layer's per-example weight gradient Σ_n a_in ⊗ δ_in
  from its inputs a and output gradients δ, all examples' δ from one backward pass of the
  chunk; about one gradient's cost, and a dense layer's squares without forming its gradients.
  For models whose parameters all belong to flax `nn.Dense`, `nn.Conv` and evaluation-mode
  `nn.BatchNorm` layers (the model zoo's, `make_logits_fn`'s evaluation mode).
* 'vmap': a backward pass per example, `jax.vmap` over the examples; any model.
`engine='auto'` (the default) takes 'layers' where it covers the model.

Chunking. Per-example work (a vmap over examples) runs over chunks of `chunk_size` consecutive
examples in a `lax.map`, so peak memory is that of one chunk. Results do not depend on
`chunk_size` (up to floating-point summation order).

Devices. The functions give the same numbers on one device, under `jax.jit` with the batch
sharded over a mesh, and inside `jax.shard_map` (each device's view, the design's step style):
* Under `jax.jit` with inputs on a multi-device mesh, the per-example work runs in a
  `jax.shard_map` over all the mesh's axes (`_devices.map_examples`: the batch split evenly,
  padded if needed, params replicated), which XLA's partitioner needs for correct per-example
  gradients of convolutions.
* Inside `jax.shard_map`, the inputs are this device's rows of a global batch split evenly over
  the mesh axes `axis_name` (default: every manual axis; `_core.batch_axes`): parameter
  gradients are made per-device (`_core.as_varying`), sampled labels are this device's rows of
  the global draw (so they equal the single-device labels), and scalar results are averaged over
  devices (`_core.global_mean`): every device gets the global value.
  `per_example_grad_sq_norms` returns the local rows [B_local].
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from fisher_jax.curvature import _core
from fisher_jax.curvature import _devices
from fisher_jax.curvature import _layers
from fisher_jax.curvature._devices import map_in_chunks  # noqa: F401  (public API)

LogitsFn = Callable[..., jax.Array]

FISHER_ESTIMATORS = ('sampled', 'exact', 'empirical')


def _sq_norm(tree):
  return optax.tree.norm(tree, squared=True)


ENGINES = ('auto', 'layers', 'vmap')


# An estimator is the logits cotangents u_ri of each example whose gradients g_ri = J_iᵀ u_ri
# are squared (summed over r): `rows(z [b, C], extra) -> [R, b, C]` with `extra` the estimator's
# per-example data (labels, Gumbel noise, or None), mapped over with the examples.


def _label_rows(z, labels):
  """One row, p_i - e_{y_i}: g_i = ∇θ CE(x_i, y_i)."""
  return _core.ce_logit_grad(z, labels)[None]


def _sampled_rows(z, noise):
  """One row at the labels ŷ_i = argmax(z_i + G_i), drawn where the logits are."""
  return _label_rows(z, _core.labels_from_noise(z, noise))


def _exact_rows(z, extra):
  """C rows u_ic = sqrt(p_ic) (p_i - e_c): Σ_c u_ic u_icᵀ = diag(p_i) - p_i p_iᵀ, so Σ_c g_ic ⊙
  g_ic is Σ_c p_i(c) ∇θ CE(x_i, c)², entry by entry."""
  del extra
  p = jax.nn.softmax(z)
  rows = jnp.sqrt(p)[:, :, None] * (p[:, None, :] - jnp.eye(z.shape[-1], dtype=z.dtype))
  return jnp.swapaxes(rows, 0, 1)


def _estimator(caller, estimator, params, inputs, logits_fn, rng, labels, axes):
  """`(rows, extra)` of an estimator ('empirical', 'sampled', 'exact'); see `_label_rows`."""
  if estimator == 'empirical':
    if labels is None:
      raise ValueError(f"{caller}(estimator='empirical') needs labels=[B] true labels.")
    return _label_rows, labels
  if estimator == 'sampled':
    if rng is None:
      raise ValueError(f"{caller}(estimator='sampled') needs rng=a PRNG key to sample "
                       'labels from the model.')
    shape = jax.eval_shape(logits_fn, params, inputs)
    return _sampled_rows, _core.gumbel_rows(rng, shape.shape, shape.dtype, axes)
  if estimator == 'exact':
    return _exact_rows, None
  raise ValueError(f'estimator={estimator!r} is unknown; choose one of '
                   f'{list(FISHER_ESTIMATORS)}.')


def _use_layers(caller, engine, logits_fn, params, inputs) -> bool:
  """Whether the per-example pass runs on the 'layers' engine (see `fisher_trace`)."""
  if engine not in ENGINES:
    raise ValueError(f'{caller}(engine={engine!r}) is unknown; choose one of {list(ENGINES)}.')
  if engine == 'vmap':
    return False
  reason = _layers.unsupported_reason(logits_fn, params, inputs)
  if reason is not None and engine == 'layers':
    raise ValueError(f"{caller}(engine='layers') does not cover this model: {reason}; pass "
                     "engine='auto' (or 'vmap') to use per-example gradients by vmap.")
  return reason is None


def _vmap_grad_squares(logits_fn, rows, reduction):
  """The vmap engine: `one(params, (x, extra))`, Σ_r g_r ⊙ g_r of one example reduced by
  `reduction` (`_layers.REDUCTIONS`; 'rows' is 'total' here: `map_examples` maps it)."""
  reduction = 'total' if reduction == 'rows' else reduction

  def one(p, example):
    x, extra = example
    z, vjp = jax.vjp(lambda q: logits_fn(q, x[None]), p)
    cotangents = rows(z, jax.tree.map(lambda e: e[None], extra))[:, 0]  # [R, C]
    if cotangents.shape[0] == 1:
      (grads,) = vjp(cotangents)
      squares = [g[None] * g[None] for g in jax.tree.leaves(grads)]  # [1, ...] per leaf
    else:
      (grads,) = jax.vmap(vjp)(cotangents[:, None])
      squares = [jnp.sum(g * g, axis=0)[None] for g in jax.tree.leaves(grads)]
    return _layers.combine_leaves([_layers.reduce_leaf(x, reduction) for x in squares], p,
                                  reduction)
  return one


def _layers_grad_squares(logits_fn, rows, reduction):
  """The layers engine: the chunk function `(params, (x, extra), weights) -> ` the sum over
  the chunk's examples (`reduction` 'rows': per example, without weights)."""
  def chunk(p, example, weights=None):
    x, extra = example

    def cotangents(z):
      u = rows(z, extra)
      return u if weights is None else jnp.where(weights[None, :, None], u, 0)
    return _layers.grad_squares(logits_fn, p, x, cotangents, reduction)
  return chunk


def _grad_squares_fn(caller, engine, logits_fn, params, inputs, rows, reduction):
  """`(fn, batched)` for `_devices.map_examples` / `sum_examples`: the engine's function of the
  squared gradients at cotangent `rows`, reduced by `reduction` ('rows': per example)."""
  if _use_layers(caller, engine, logits_fn, params, inputs):
    return _layers_grad_squares(logits_fn, rows, reduction), True
  return _vmap_grad_squares(logits_fn, rows, reduction), False


def per_example_grad_sq_norms(logits_fn: LogitsFn, params, inputs, labels, *,
                              chunk_size: Optional[int] = None,
                              axis_name: _core.AxisName = None,
                              engine: str = 'auto') -> jax.Array:
  """Squared norms of the per-example parameter gradients, ‖∇θ CE(x_i, y_i)‖².

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`, per-example independent.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    labels: [B] integer labels y_i.
    chunk_size: examples per vmap call on each device (bounds memory); None: all at once.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis); see the module docstring.
    engine: how the per-example gradients are had; see `fisher_trace`.

  Returns:
    [B]: ‖∇θ CE(x_i, y_i)‖², a sum of squares over all P parameters, one per example (no
    average). The full [B, P] Jacobian is never formed beyond one chunk.
  """
  fn, batched = _grad_squares_fn('per_example_grad_sq_norms', engine, logits_fn, params, inputs,
                              _label_rows, 'rows')
  return _devices.map_examples(fn, params, (inputs, labels), chunk_size,
                               _core.batch_axes(axis_name), batched=batched)


def _fisher_mean(logits_fn, params, inputs, *, caller, estimator, rng, labels, chunk_size,
                 axis_name, reduction, engine):
  """The mean over the (global) batch of `reduction` of the per-example squared gradients at
  the estimator's labels: the one per-example pass behind fisher_trace and fisher_diagonal,
  summed chunk by chunk (`_devices.sum_examples`: memory holds one chunk's squares)."""
  axes = _core.batch_axes(axis_name)
  rows, extra = _estimator(caller, estimator, params, inputs, logits_fn, rng, labels, axes)
  fn, batched = _grad_squares_fn(caller, engine, logits_fn, params, inputs, rows, reduction)
  total = _devices.sum_examples(fn, params, (inputs, extra), chunk_size, axes, batched=batched)
  rows_here = jax.tree.leaves(inputs)[0].shape[0]  # this device's inside shard_map, else all
  return _core.global_mean(jax.tree.map(lambda x: x / rows_here, total), axes)


def fisher_trace(logits_fn: LogitsFn, params, inputs, *, estimator: str,
                 rng: Optional[jax.Array] = None, labels: Optional[jax.Array] = None,
                 chunk_size: Optional[int] = None, axis_name: _core.AxisName = None,
                 per_leaf: bool = False, engine: str = 'auto'):
  """Trace of the Fisher information, averaged over the B inputs.

  Estimators (each a mean over the B inputs of a sum over all P parameters):
    'sampled': (1/B) Σ_i ‖∇θ CE(x_i, ŷ_i)‖², ŷ_i ~ p_θ(·|x_i) drawn with `rng` (the study's
      estimator; unbiased for Tr(F)). It is the value of the penalty 'fp_per_example'.
    'exact': (1/B) Σ_i Σ_c p_θ(c|x_i) ‖∇θ CE(x_i, c)‖² = (1/B) Σ_i Tr(J_iᵀ (diag p_i - p_i p_iᵀ)
      J_i), the expectation over all C classes (no sampling noise; costs about C times
      'sampled').
    'empirical': (1/B) Σ_i ‖∇θ CE(x_i, y_i)‖² with the true `labels` (the empirical Fisher).

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`, per-example independent.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    estimator: one of 'sampled', 'exact', 'empirical'.
    rng: PRNG key, required by 'sampled' (ŷ = jax.random.categorical(rng, logits [B, C])).
    labels: [B] integer labels, required by 'empirical'.
    chunk_size: examples per vmap call on each device (bounds memory); None: all at once.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis); see the module docstring.
    per_leaf: return a pytree like `params` of scalars instead: leaf l is the same mean with
      the squared norm taken over that leaf's parameters only (the trace of F's diagonal block
      of the leaf); the leaves sum to the total. Same per-example pass, no extra cost.
    engine: how the per-example gradients are had (the same numbers either way):
      'layers': from each layer's inputs and output gradients, one forward and one backward
        pass of the chunk (about one gradient's cost; BackPACK's way), for models whose
        parameters all belong to flax `nn.Dense`, `nn.Conv` and evaluation-mode `nn.BatchNorm`
        layers (see `fisher_jax.curvature._layers`); ValueError naming the reason otherwise.
      'vmap': a per-example backward pass, `jax.vmap` over the examples (any model).
      'auto' (default): 'layers' where it covers the model, 'vmap' otherwise.

  Returns:
    Scalar Tr(F) estimate (a pytree of scalars with `per_leaf`).

  Raises:
    ValueError: unknown estimator, or the argument the estimator needs is missing.
  """
  return _fisher_mean(logits_fn, params, inputs, caller='fisher_trace', estimator=estimator,
                      rng=rng, labels=labels, chunk_size=chunk_size, axis_name=axis_name,
                      reduction='per_leaf' if per_leaf else 'total', engine=engine)


def fisher_diagonal(logits_fn: LogitsFn, params, inputs, *, estimator: str,
                    rng: Optional[jax.Array] = None, labels: Optional[jax.Array] = None,
                    chunk_size: Optional[int] = None, axis_name: _core.AxisName = None,
                    engine: str = 'auto'):
  """Diagonal of the Fisher information, diag F, averaged over the B inputs.

  Entry p of each estimator (a mean over the B inputs; the estimators of `fisher_trace`, whose
  value is the sum of these entries):
    'sampled': (1/B) Σ_i (∂_p CE(x_i, ŷ_i))², ŷ_i ~ p_θ(·|x_i) drawn with `rng` (unbiased);
    'exact': (1/B) Σ_i Σ_c p_θ(c|x_i) (∂_p CE(x_i, c))² = diag of (1/B) Σ_i J_iᵀ (diag p_i -
      p_i p_iᵀ) J_i (no sampling noise; about C times the cost);
    'empirical': (1/B) Σ_i (∂_p CE(x_i, y_i))² at the true `labels`.

  Costs what `fisher_trace` costs (the same per-example pass); memory holds one chunk's
  squared gradients [chunk_size, P] (summed chunk by chunk), all B's without `chunk_size`.

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`, per-example independent.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    estimator: one of 'sampled', 'exact', 'empirical'.
    rng: PRNG key, required by 'sampled'.
    labels: [B] integer labels, required by 'empirical'.
    chunk_size: examples per vmap call on each device; None: all at once.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis).
    engine: 'auto', 'layers' or 'vmap', as in `fisher_trace`.

  Returns:
    A pytree like `params`: diag F.

  Raises:
    ValueError: unknown estimator, or the argument the estimator needs is missing.
  """
  return _fisher_mean(logits_fn, params, inputs, caller='fisher_diagonal', estimator=estimator,
                      rng=rng, labels=labels, chunk_size=chunk_size, axis_name=axis_name,
                      reduction='elementwise', engine=engine)


def batch_grad_sq_norm(logits_fn: LogitsFn, params, inputs, labels: _core.LabelsArg, *,
                       axis_name: _core.AxisName = None, per_leaf: bool = False):
  """‖(1/B) Σ_i ∇θ CE(x_i, y_i)‖², the squared norm of the global mean gradient at `labels`.

  `labels` [B] (this device's rows inside shard_map), or `labels(logits [B, C]) -> [B]` for
  labels drawn from the same forward pass. `batch_fisher_trace` is this at sampled labels; the
  penalties 'gp' and 'gpr' are this at true and at random labels. `per_leaf`: the squared
  norm of each leaf of the mean gradient, a pytree like `params` summing to the total.
  """
  axes = _core.batch_axes(axis_name)
  grads, _, _ = _core.mean_ce_grad(logits_fn, _core.as_varying(params, axes), inputs, labels)
  grads = _core.global_mean(grads, axes)
  return jax.tree.map(_sq_norm, grads) if per_leaf else _sq_norm(grads)


def batch_fisher_trace(logits_fn: LogitsFn, params, inputs, *, rng: jax.Array,
                       axis_name: _core.AxisName = None, per_leaf: bool = False):
  """Trace of the mini-batch Fisher, Tr(F_B) = ‖(1/B) Σ_i ∇θ CE(x_i, ŷ_i)‖².

  The squared norm (a sum over all P parameters) of the mean over the B inputs of the gradients
  at labels ŷ_i ~ p_θ(·|x_i), drawn as `jax.random.categorical(rng, logits [B, C])`. It is the
  value of the Fisher penalty 'fp'. Costs one gradient of the batch.

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    rng: PRNG key for the sampled labels.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis); see the module docstring.
    per_leaf: return a pytree like `params` of scalars, leaf l the squared norm of the mean
      gradient's leaf (they sum to the total); same cost.

  Returns:
    Scalar Tr(F_B) (a pytree of scalars with `per_leaf`).
  """
  axes = _core.batch_axes(axis_name)
  return batch_grad_sq_norm(logits_fn, params, inputs,
                            lambda z: _core.sampled_labels(rng, z, axes), axis_name=axes,
                            per_leaf=per_leaf)


def gradient_norm(logits_fn: LogitsFn, params, inputs, labels, *,
                  axis_name: _core.AxisName = None) -> jax.Array:
  """Norm of the mean-loss gradient, ‖(1/B) Σ_i ∇θ CE(x_i, y_i)‖ (the norm, not squared).

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    labels: [B] true integer labels y_i.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis); see the module docstring.

  Returns:
    Scalar Euclidean norm over all P parameters.
  """
  return jnp.sqrt(batch_grad_sq_norm(logits_fn, params, inputs, labels, axis_name=axis_name))
