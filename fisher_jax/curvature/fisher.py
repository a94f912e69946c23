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

Chunking. Per-example work (a vmap over examples) runs over chunks of `chunk_size` examples in a
`lax.map`, so peak memory is that of one chunk. Chunk j holds examples j, j + n, j + 2n, ... (n
chunks); this strided split keeps each chunk spread over all devices when the batch axis is
sharded. Results do not depend on `chunk_size` (up to floating-point summation order).
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


def map_in_chunks(fn: Callable, xs, chunk_size: Optional[int]):
  """Applies a per-example `fn` to every example of `xs`, `chunk_size` examples at a time.

  Args:
    fn: maps one example (a pytree of arrays without the batch axis) to a pytree of arrays.
    xs: pytree of arrays with a common leading batch axis B.
    chunk_size: examples per vmap call; None vmaps over all B at once.

  Returns:
    The pytree `jax.vmap(fn)(xs)`, leaves [B, ...]. Peak memory is that of one chunk. Chunk j
    holds examples j, j+n, j+2n, ... (n = ceil(B / chunk_size)); the last examples are padded
    with zeros, computed and dropped.
  """
  _check_chunk_size(chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None or chunk_size >= batch:
    return jax.vmap(fn)(xs)
  num_chunks = math.ceil(batch / chunk_size)
  pad = num_chunks * chunk_size - batch

  def to_chunks(x):  # [B, ...] -> [num_chunks, chunk_size, ...], chunk j = rows j::num_chunks.
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return jnp.swapaxes(x.reshape((chunk_size, num_chunks) + x.shape[1:]), 0, 1)

  def from_chunks(y):  # inverse of to_chunks, padding dropped.
    y = jnp.swapaxes(y, 0, 1)
    return y.reshape((num_chunks * chunk_size,) + y.shape[2:])[:batch]

  out = jax.lax.map(jax.vmap(fn), jax.tree.map(to_chunks, xs))
  return jax.tree.map(from_chunks, out)


def _single_logits_and_vjp(logits_fn, params, x):
  """z [C] and the vjp θ-cotangent map of one example x (no batch axis)."""
  return jax.vjp(lambda p: logits_fn(p, x[None])[0], params)


def _sq_norm(tree):
  return optax.tree.norm(tree, squared=True)


def _ce_logit_grad(z, label):
  """∂CE/∂z = softmax(z) - e_label, [..., C]."""
  return jax.nn.softmax(z) - jax.nn.one_hot(label, z.shape[-1], dtype=z.dtype)


def _per_example_label_sq_norms(logits_fn, params, inputs, labels, chunk_size):
  def one(example):
    x, y = example
    z, vjp = _single_logits_and_vjp(logits_fn, params, x)
    (g,) = vjp(_ce_logit_grad(z, y))
    return _sq_norm(g)
  return map_in_chunks(one, (inputs, labels), chunk_size)


def _gumbel_noise(logits_fn, params, inputs, rng):
  """The Gumbel noise G [B, C] that `jax.random.categorical(rng, z)` adds to the logits."""
  shape = jax.eval_shape(logits_fn, params, inputs)
  return jax.random.gumbel(rng, shape.shape, shape.dtype)


def per_example_grad_sq_norms(logits_fn: LogitsFn, params, inputs, labels, *,
                              chunk_size: Optional[int] = None) -> jax.Array:
  """Squared norms of the per-example parameter gradients, ‖∇θ CE(x_i, y_i)‖².

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`, per-example independent.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    labels: [B] integer labels y_i.
    chunk_size: examples per vmap call (bounds memory); None: all at once.

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
    chunk_size: examples per vmap call (bounds memory); None: all at once.

  Returns:
    Scalar Tr(F) estimate.

  Raises:
    ValueError: unknown estimator, or the argument the estimator needs is missing.
  """
  if estimator == 'empirical':
    if labels is None:
      raise ValueError("fisher_trace(estimator='empirical') needs labels=[B] true labels.")
    return jnp.mean(_per_example_label_sq_norms(logits_fn, params, inputs, labels, chunk_size))
  if estimator == 'sampled':
    if rng is None:
      raise ValueError("fisher_trace(estimator='sampled') needs rng=a PRNG key to sample "
                       'labels from the model.')
    gumbel = _gumbel_noise(logits_fn, params, inputs, rng)

    def one_sampled(example):
      x, noise = example
      z, vjp = _single_logits_and_vjp(logits_fn, params, x)
      label = jax.lax.stop_gradient(jnp.argmax(z + noise))
      (g,) = vjp(_ce_logit_grad(z, label))
      return _sq_norm(g)

    return jnp.mean(map_in_chunks(one_sampled, (inputs, gumbel), chunk_size))
  if estimator == 'exact':
    def one_exact(x):
      z, vjp = _single_logits_and_vjp(logits_fn, params, x)
      p = jax.nn.softmax(z)
      # Rows u_c = sqrt(p_c) (p - e_c): Σ_c u_c u_cᵀ = diag(p) - p pᵀ, so Σ_c ‖J^T u_c‖² is
      # Σ_c p_c ‖∇θ CE(x, c)‖².
      cotangents = jnp.sqrt(p)[:, None] * (p[None, :] - jnp.eye(z.shape[-1], dtype=z.dtype))
      (grads,) = jax.vmap(vjp)(cotangents)
      return _sq_norm(grads)

    return jnp.mean(map_in_chunks(one_exact, inputs, chunk_size))
  raise ValueError(f'estimator={estimator!r} is unknown; choose one of {list(FISHER_ESTIMATORS)}.')


def _mean_ce_grad(logits_fn, params, inputs, labels=None, gumbel=None):
  """(1/B) Σ_i ∇θ CE(x_i, y_i) with y_i = labels, or argmax(z_i + gumbel_i) when labels is None."""
  z, vjp = jax.vjp(lambda p: logits_fn(p, inputs), params)
  if labels is None:
    labels = jax.lax.stop_gradient(jnp.argmax(z + gumbel, axis=-1))
  (g,) = vjp(_ce_logit_grad(z, labels) / z.shape[0])
  return g


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
