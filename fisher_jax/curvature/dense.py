"""Brute-force references for every curvature quantity (tests only: cost O(B·C·P) and O(P²)).

Each function flattens the parameters with `ravel_pytree`, forms the full Jacobian
(`jax.jacrev`) or Hessian (`jax.hessian`) as a dense matrix and evaluates the definition
literally. They share no code with `fisher.py` / `hessian.py`, so agreement is a real check.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fisher_jax import losses


def _flat(logits_fn, params, inputs):
  flat, unravel = ravel_pytree(params)
  return flat, lambda f: logits_fn(unravel(f), inputs)


def per_example_grads(logits_fn, params, inputs, labels):
  """[B, P]: row i is ∇θ CE(x_i, y_i) (flattened), by jacrev of the per-example losses."""
  flat, logits_of = _flat(logits_fn, params, inputs)
  return jax.jacrev(lambda f: losses.cross_entropy(logits_of(f), labels))(flat)


def per_example_grad_sq_norms(logits_fn, params, inputs, labels):
  """[B]: ‖∇θ CE(x_i, y_i)‖²."""
  return jnp.sum(per_example_grads(logits_fn, params, inputs, labels) ** 2, axis=1)


def sampled_labels(logits_fn, params, inputs, rng):
  """[B]: ŷ = jax.random.categorical(rng, logits [B, C]), the contract's sampled labels."""
  return jax.random.categorical(rng, logits_fn(params, inputs))


def fisher(logits_fn, params, inputs):
  """[P, P]: F = (1/B) Σ_i J_iᵀ (diag p_i - p_i p_iᵀ) J_i from the dense Jacobian J [B, C, P]."""
  flat, logits_of = _flat(logits_fn, params, inputs)
  jac = jax.jacrev(logits_of)(flat)  # [B, C, P]
  p = jax.nn.softmax(logits_of(flat))  # [B, C]
  fisher_out = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]  # [B, C, C]
  return jnp.einsum('bcp,bcd,bdq->pq', jac, fisher_out, jac) / p.shape[0]


def fisher_vp(logits_fn, params, inputs, v):
  """F v as a pytree like `params`, from the dense Fisher matrix."""
  flat_v, unravel = ravel_pytree(v)
  return unravel(fisher(logits_fn, params, inputs) @ flat_v)


def _labels(logits_fn, params, inputs, estimator, rng, labels):
  return sampled_labels(logits_fn, params, inputs, rng) if estimator == 'sampled' else labels


def fisher_trace(logits_fn, params, inputs, *, estimator, rng=None, labels=None):
  """Tr(F) by definition: 'exact' as the trace of the dense Fisher matrix; 'sampled' /
  'empirical' as the mean of dense per-example squared norms at sampled / true labels."""
  if estimator == 'exact':
    return jnp.trace(fisher(logits_fn, params, inputs))
  labels = _labels(logits_fn, params, inputs, estimator, rng, labels)
  return jnp.mean(per_example_grad_sq_norms(logits_fn, params, inputs, labels))


def fisher_diagonal(logits_fn, params, inputs, *, estimator, rng=None, labels=None):
  """diag F as a pytree like `params`: 'exact' the dense Fisher's diagonal; 'sampled' /
  'empirical' the mean over examples of the squared dense per-example gradients."""
  _, unravel = ravel_pytree(params)
  if estimator == 'exact':
    return unravel(jnp.diag(fisher(logits_fn, params, inputs)))
  labels = _labels(logits_fn, params, inputs, estimator, rng, labels)
  return unravel(jnp.mean(per_example_grads(logits_fn, params, inputs, labels) ** 2, axis=0))


def block_traces(matrix, params):
  """Pytree like `params` of scalars: the trace of `matrix` [P, P]'s diagonal block of each
  leaf (ravel_pytree order)."""
  _, unravel = ravel_pytree(params)
  return jax.tree.map(jnp.sum, unravel(jnp.diag(matrix)))


def batch_fisher_trace(logits_fn, params, inputs, *, rng):
  """Tr(F_B) = ‖(1/B) Σ_i ∇θ CE(x_i, ŷ_i)‖² from the dense per-example gradients."""
  labels = sampled_labels(logits_fn, params, inputs, rng)
  return jnp.sum(jnp.mean(per_example_grads(logits_fn, params, inputs, labels), axis=0) ** 2)


def gradient_norm(logits_fn, params, inputs, labels):
  """‖(1/B) Σ_i ∇θ CE(x_i, y_i)‖ from the dense per-example gradients."""
  return jnp.linalg.norm(jnp.mean(per_example_grads(logits_fn, params, inputs, labels), axis=0))


def hessian(loss_fn, params):
  """[P, P] dense Hessian of `loss_fn(params) -> scalar` in ravel_pytree order."""
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: loss_fn(unravel(f)))(flat)


def hvp(loss_fn, params, v):
  """H v as a pytree like `params`, from the dense Hessian."""
  flat_v, unravel = ravel_pytree(v)
  return unravel(hessian(loss_fn, params) @ flat_v)


def hessian_trace(loss_fn, params):
  """Tr(H), the sum of the dense Hessian's diagonal."""
  return jnp.trace(hessian(loss_fn, params))


def hessian_eigenvalues(loss_fn, params):
  """[P] eigenvalues of the dense Hessian, ascending."""
  return jnp.linalg.eigvalsh(hessian(loss_fn, params))


def hessian_diagonal(loss_fn, params):
  """diag H as a pytree like `params`."""
  _, unravel = ravel_pytree(params)
  return unravel(jnp.diag(hessian(loss_fn, params)))
