"""Fisher information from per-example gradients: Tr(F), Tr(F_B), the gradient norm.

Notation. `logits_fn(params, inputs [B, ...]) -> z [B, C]` is per-example independent (see
`make_logits_fn` for BatchNorm models); p_i = softmax(z_i); CE(x_i, y) = -log p_i(y) =
logsumexp(z_i) - z_i[y]; g_i(y) = ∇θ CE(x_i, y) = J_iᵀ (p_i - e_y) with J_i = ∂z_i/∂θ [C, P].
The Fisher of the model's predictive distribution, averaged over the B inputs, is

    F = (1/B) Σ_i E_{y ~ p_i} [ g_i(y) g_i(y)ᵀ ] = (1/B) Σ_i J_iᵀ (diag(p_i) - p_i p_iᵀ) J_i,

so Tr(F) = (1/B) Σ_i Σ_c p_i(c) ‖g_i(c)‖² (a mean over inputs of an expectation over classes).

Sampled labels. ŷ_i are `jax.random.categorical(rng, z)` over the whole batch's logits z [B, C]
with the `rng` given: the same (params, inputs, rng) give the same labels whatever `chunk_size`.
They are drawn by the Gumbel-max trick, ŷ_i = argmax_c (z_ic + G_ic) with
G = jax.random.gumbel(rng, [B, C]), which is exactly how `jax.random.categorical` draws (the tests
check the equality); the noise is drawn up front and the arg-max is taken inside the per-example
pass, which saves a separate forward pass over the batch.

Chunking. Per-example work (a vmap over examples) runs over chunks of `chunk_size` consecutive
examples in a `lax.map`, so peak memory is that of one chunk. Results do not depend on
`chunk_size` (up to floating-point summation order).

Devices. The functions give the same numbers on one device, under `jax.jit` with the batch
sharded over a mesh, and inside `jax.shard_map` (each device's view, the DESIGN's step style):
* Under `jax.jit` with inputs on a multi-device mesh, the per-example work runs in a
  `jax.shard_map` over all the mesh's axes (the batch split evenly, padded if needed, params
  replicated). This is needed for correctness, not only speed: XLA's partitioner returns wrong
  per-example gradients for a vmapped convolution whose batch is sharded (the
  batch-grouped weight-gradient convolution; seen with jax 0.10.2 on CPU, Shardy and GSPMD).
* Inside `jax.shard_map`, the inputs are taken to be the local slice of a global batch split
  evenly over all manual mesh axes: parameter gradients are made per-device (`jax.lax.pcast(...,
  to='varying')`; otherwise JAX sums the gradient of a replicated value over devices), sampled
  labels use the local rows of the global Gumbel noise (so they equal the single-device labels),
  and scalar results are averaged over devices (`lax.pmean`): every device gets the global
  value. `per_example_grad_sq_norms` returns the local rows [B_local].
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[..., jax.Array]

FISHER_ESTIMATORS = ('sampled', 'exact', 'empirical')


def _check_chunk_size(chunk_size):
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f'chunk_size={chunk_size!r} is invalid; pass a positive int or None '
                     '(all examples at once).')


def _pad_batch(xs, multiple):
  """Pads the leading axis of every leaf with zeros to a multiple of `multiple`."""
  pad = -jax.tree.leaves(xs)[0].shape[0] % multiple
  return jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), xs)


def _manual_axes():
  """Mesh axes this code runs manually over (inside `jax.shard_map`), or ()."""
  return tuple(jax.sharding.get_abstract_mesh().manual_axes)


def _make_varying(tree, axes):
  """Marks replicated values as per-device over `axes` (inside shard_map), so that gradients
  with respect to them stay per-device instead of being summed over devices by JAX."""
  def one(x):
    missing = tuple(a for a in axes if a not in jax.typeof(x).mat.varying)
    return jax.lax.pcast(x, missing, to='varying') if missing else x
  return jax.tree.map(one, tree)


def _global_mean(values):
  """Mean over the examples of the global batch: local mean, then pmean over manual axes."""
  mean = jnp.mean(values)
  axes = _manual_axes()
  return jax.lax.pmean(mean, axes) if axes else mean


def _inputs_mesh(xs):
  """The multi-device mesh the (traced) inputs live on, or None."""
  mesh = getattr(jax.typeof(jax.tree.leaves(xs)[0]).sharding, 'mesh', None)
  if mesh is None or mesh.empty or mesh.size == 1:
    mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.size == 1 else mesh


def _per_example(fn: Callable, params, xs, chunk_size: Optional[int]):
  """`jax.vmap(lambda x: fn(params, x))(xs)` in chunks, correct on any device layout.

  On a multi-device mesh (outside shard_map) the work is placed in a shard_map over all mesh
  axes, which sidesteps XLA's mis-partitioning of vmapped convolution gradients; inside
  shard_map the parameters are made per-device first (see the module docstring).
  """
  _check_chunk_size(chunk_size)
  manual = _manual_axes()
  if manual:
    params = _make_varying(params, manual)
    return map_in_chunks(lambda x: fn(params, x), xs, chunk_size)
  mesh = _inputs_mesh(xs)
  if mesh is None:
    return map_in_chunks(lambda x: fn(params, x), xs, chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  axes = tuple(mesh.axis_names)
  spec = jax.sharding.PartitionSpec(axes)
  xs = _pad_batch(xs, mesh.size)  # zero examples, computed and dropped
  if mesh.explicit_axes:  # explicit sharding: shard_map wants inputs laid out as its in_specs
    xs = jax.sharding.reshard(xs, jax.sharding.NamedSharding(mesh, spec))
    params = jax.sharding.reshard(
        params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  body = lambda p, x: _per_example(fn, p, x, chunk_size)
  out = jax.shard_map(body, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), spec),
                      out_specs=spec)(params, xs)
  return jax.tree.map(lambda y: y[:batch], out)


def map_in_chunks(fn: Callable, xs, chunk_size: Optional[int]):
  """Applies a per-example `fn` to every example of `xs`, `chunk_size` examples at a time.

  Args:
    fn: maps one example (a pytree of arrays without the batch axis) to a pytree of arrays.
    xs: pytree of arrays with a common leading batch axis B.
    chunk_size: examples per vmap call; None vmaps over all B at once.

  Returns:
    The pytree `jax.vmap(fn)(xs)`, leaves [B, ...]. With `chunk_size`, `jax.lax.map` runs
    consecutive chunks in a loop (the last B mod chunk_size examples in one more vmap), so peak
    memory is that of one chunk.
  """
  _check_chunk_size(chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None or chunk_size >= batch:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


def _single_logits_and_vjp(logits_fn, params, x):
  """z [C] and the vjp θ-cotangent map of one example x (no batch axis)."""
  return jax.vjp(lambda p: logits_fn(p, x[None])[0], params)


def _sq_norm(tree):
  return optax.tree.norm(tree, squared=True)


def _ce_logit_grad(z, label):
  """∂CE/∂z = softmax(z) - e_label, [..., C]."""
  return jax.nn.softmax(z) - jax.nn.one_hot(label, z.shape[-1], dtype=z.dtype)


def _per_example_label_sq_norms(logits_fn, params, inputs, labels, chunk_size):
  def one(p, example):
    x, y = example
    z, vjp = _single_logits_and_vjp(logits_fn, p, x)
    (g,) = vjp(_ce_logit_grad(z, y))
    return _sq_norm(g)
  return _per_example(one, params, (inputs, labels), chunk_size)


def _gumbel_noise(logits_fn, params, inputs, rng):
  """The rows of G [B, C] that `jax.random.categorical(rng, z)` adds to the logits z [B, C].

  Inside shard_map the noise of the global batch is drawn and this device's rows returned.
  """
  shape = jax.eval_shape(logits_fn, params, inputs)
  axes = _manual_axes()
  if not axes:
    return jax.random.gumbel(rng, shape.shape, shape.dtype)
  local = shape.shape[0]
  num_devices = math.prod(jax.sharding.get_abstract_mesh().shape[a] for a in axes)
  noise = jax.random.gumbel(rng, (local * num_devices,) + shape.shape[1:], shape.dtype)
  return jax.lax.dynamic_slice_in_dim(noise, jax.lax.axis_index(axes) * local, local)


def per_example_grad_sq_norms(logits_fn: LogitsFn, params, inputs, labels, *,
                              chunk_size: Optional[int] = None) -> jax.Array:
  """Squared norms of the per-example parameter gradients, ‖∇θ CE(x_i, y_i)‖².

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`, per-example independent.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    labels: [B] integer labels y_i.
    chunk_size: examples per vmap call on each device (bounds memory); None: all at once.

  Returns:
    [B]: ‖∇θ CE(x_i, y_i)‖², a sum of squares over all P parameters, one per example (no
    average). The full [B, P] Jacobian is never formed beyond one chunk.
  """
  return _per_example_label_sq_norms(logits_fn, params, inputs, labels, chunk_size)


def fisher_trace(logits_fn: LogitsFn, params, inputs, *, estimator: str,
                 rng: Optional[jax.Array] = None, labels: Optional[jax.Array] = None,
                 chunk_size: Optional[int] = None) -> jax.Array:
  """Trace of the Fisher information, averaged over the B inputs.

  Estimators (each a mean over the B inputs of a sum over all P parameters):
    'sampled': (1/B) Σ_i ‖∇θ CE(x_i, ŷ_i)‖², ŷ_i ~ p_θ(·|x_i) drawn with `rng` (the study's
      estimator; unbiased for Tr(F)).
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

  Returns:
    Scalar Tr(F) estimate.

  Raises:
    ValueError: unknown estimator, or the argument the estimator needs is missing.
  """
  if estimator == 'empirical':
    if labels is None:
      raise ValueError("fisher_trace(estimator='empirical') needs labels=[B] true labels.")
    return _global_mean(_per_example_label_sq_norms(logits_fn, params, inputs, labels,
                                                    chunk_size))
  if estimator == 'sampled':
    if rng is None:
      raise ValueError("fisher_trace(estimator='sampled') needs rng=a PRNG key to sample "
                       'labels from the model.')
    gumbel = _gumbel_noise(logits_fn, params, inputs, rng)

    def one_sampled(p, example):
      x, noise = example
      z, vjp = _single_logits_and_vjp(logits_fn, p, x)
      label = jax.lax.stop_gradient(jnp.argmax(z + noise))
      (g,) = vjp(_ce_logit_grad(z, label))
      return _sq_norm(g)

    return _global_mean(_per_example(one_sampled, params, (inputs, gumbel), chunk_size))
  if estimator == 'exact':
    def one_exact(p, x):
      z, vjp = _single_logits_and_vjp(logits_fn, p, x)
      p = jax.nn.softmax(z)
      # Rows u_c = sqrt(p_c) (p - e_c): Σ_c u_c u_cᵀ = diag(p) - p pᵀ, so Σ_c ‖J^T u_c‖² is
      # Σ_c p_c ‖∇θ CE(x, c)‖².
      cotangents = jnp.sqrt(p)[:, None] * (p[None, :] - jnp.eye(z.shape[-1], dtype=z.dtype))
      (grads,) = jax.vmap(vjp)(cotangents)
      return _sq_norm(grads)

    return _global_mean(_per_example(one_exact, params, inputs, chunk_size))
  raise ValueError(f'estimator={estimator!r} is unknown; choose one of {list(FISHER_ESTIMATORS)}.')


def _mean_ce_grad(logits_fn, params, inputs, labels=None, gumbel=None):
  """(1/B) Σ_i ∇θ CE(x_i, y_i) with y_i = labels, or argmax(z_i + gumbel_i) when labels is None.

  Inside shard_map: the local mean gradient, averaged over the manual axes (the global mean).
  """
  axes = _manual_axes()
  if axes:
    params = _make_varying(params, axes)
  z, vjp = jax.vjp(lambda p: logits_fn(p, inputs), params)
  if labels is None:
    labels = jax.lax.stop_gradient(jnp.argmax(z + gumbel, axis=-1))
  (g,) = vjp(_ce_logit_grad(z, labels) / z.shape[0])
  return jax.lax.pmean(g, axes) if axes else g


def batch_fisher_trace(logits_fn: LogitsFn, params, inputs, *, rng: jax.Array) -> jax.Array:
  """Trace of the mini-batch Fisher, Tr(F_B) = ‖(1/B) Σ_i ∇θ CE(x_i, ŷ_i)‖².

  The squared norm (a sum over all P parameters) of the mean over the B inputs of the gradients
  at labels ŷ_i ~ p_θ(·|x_i), drawn as `jax.random.categorical(rng, logits [B, C])`. It is the
  quantity the Fisher penalty 'fp' adds to the loss. Costs one gradient of the batch.

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    rng: PRNG key for the sampled labels.

  Returns:
    Scalar Tr(F_B).
  """
  gumbel = _gumbel_noise(logits_fn, params, inputs, rng)
  return _sq_norm(_mean_ce_grad(logits_fn, params, inputs, gumbel=gumbel))


def gradient_norm(logits_fn: LogitsFn, params, inputs, labels) -> jax.Array:
  """Norm of the mean-loss gradient, ‖(1/B) Σ_i ∇θ CE(x_i, y_i)‖ (the norm, not squared).

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    labels: [B] true integer labels y_i.

  Returns:
    Scalar Euclidean norm over all P parameters.
  """
  return optax.tree.norm(_mean_ce_grad(logits_fn, params, inputs, labels=labels))
