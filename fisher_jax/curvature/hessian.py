"""Hessian of a scalar loss: products, trace and diagonal estimators, the top eigenvalue.

`loss_fn(params) -> scalar` is any twice-differentiable function of the parameter pytree θ,
typically the mean loss of a batch, `make_loss_fn(logits_fn, inputs, labels)`; H = ∇²θ loss
[P, P] is never formed. Every method is built on the Hessian-vector product H v, computed
forward-over-reverse (a jvp of the gradient); the trace, diagonal and eigenvalue estimators are
those of `fisher_jax.curvature.estimators` applied to `operators.make_hvp`. Several products at
the same θ share one linearization: `jax.linearize(jax.grad(loss_fn), θ)` runs the forward and
backward pass once, then each product costs only the tangent pass, and a batch of probes is one
vmapped call.

Inside `jax.jit`, build `loss_fn` from traced arguments (e.g. `jax.jit(lambda p, x, y:
hessian_trace(make_loss_fn(logits_fn, x, y), p, ...))`) rather than closing over concrete
arrays, which XLA would constant-fold.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fisher_jax import losses
from fisher_jax.curvature import estimators
from fisher_jax.curvature import operators

LossFn = Callable[..., jax.Array]

HESSIAN_TRACE_METHODS = estimators.TRACE_METHODS


def make_loss_fn(logits_fn, inputs, labels) -> LossFn:
  """`loss_fn(params)` = (1/B) Σ_i CE(x_i, y_i), the mean cross-entropy of a batch.

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    inputs: [B, ...] examples.
    labels: [B] integer labels.
  """
  return lambda params: jnp.mean(losses.cross_entropy(logits_fn(params, inputs), labels))


def hvp(loss_fn: LossFn, params, v):
  """Hessian-vector product H v, forward-over-reverse (jvp of the gradient).

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: the parameter pytree θ at which H = ∇²θ loss_fn(θ) is taken.
    v: pytree shaped like `params`.

  Returns:
    H v, a pytree shaped like `params`.
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def hessian_trace(loss_fn: LossFn, params, *, rng: jax.Array, num_probes: int,
                  method: str = 'hutchinson', per_leaf: bool = False,
                  chunk_size: Optional[int] = None):
  """Stochastic estimate of Tr(H), H = ∇²θ loss_fn(θ) [P, P], with its standard error.

  `estimators.trace_estimate` applied to `operators.make_hvp(loss_fn, params)`:
  'hutchinson': Tr(H) ≈ (1/N) Σ_n v_nᵀ H v_n with N = `num_probes` Rademacher vectors v_n
    (unbiased); the standard error is std_n(v_nᵀ H v_n) / √N (sample std, ddof=1).
  'hutch++' (Meyer et al., 2021), the same N products: N/3 products H S sketch the top of the
    spectrum, Q = orth(H S) [P, N/3]; Tr(H) ≈ Tr(Qᵀ H Q) + (1/M) Σ_m g_mᵀ (I-QQᵀ) H (I-QQᵀ) g_m
    with M = N - 2⌊N/3⌋ further Rademacher g_m. Lower variance when the spectrum decays; the
    standard error is that of the Hutchinson part (conditional on Q).

  Args:
    loss_fn: `loss_fn(params) -> scalar`, e.g. `make_loss_fn(logits_fn, inputs, labels)`.
    params: the parameter pytree θ.
    rng: PRNG key for the probes.
    num_probes: N, the number of Hessian-vector products (>= 2; >= 3 for 'hutch++').
    method: 'hutchinson' or 'hutch++'.
    per_leaf: return pytrees like `params` of scalars instead: leaf l estimates the trace of
      H's diagonal block of that leaf, from the same products (the leaves sum to the total).
    chunk_size: probes per vmapped product ('hutchinson'; bounds memory); None: all at once.

  Returns:
    (estimate, standard_error): two scalars, or two pytrees of scalars with `per_leaf`.

  Raises:
    ValueError: unknown method or too few probes.
  """
  return estimators.trace_estimate(operators.make_hvp(loss_fn, params), params, rng=rng,
                                   num_probes=num_probes, method=method, per_leaf=per_leaf,
                                   chunk_size=chunk_size)


def hessian_diagonal(loss_fn: LossFn, params, *, rng: jax.Array, num_probes: int,
                     chunk_size: Optional[int] = None):
  """Hutchinson estimate of diag H, (1/N) Σ_n v_n ⊙ H v_n, with its elementwise standard error.

  `estimators.diagonal_estimate` applied to `operators.make_hvp(loss_fn, params)`: N Rademacher
  probes, N Hessian-vector products sharing one linearization.

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: the parameter pytree θ.
    rng: PRNG key for the probes.
    num_probes: N >= 2.
    chunk_size: probes per vmapped product (bounds memory); None: all at once.

  Returns:
    (estimate, standard_error), pytrees like `params`.
  """
  return estimators.diagonal_estimate(operators.make_hvp(loss_fn, params), params, rng=rng,
                                      num_probes=num_probes, chunk_size=chunk_size)


def hessian_top_eigenvalue(loss_fn: LossFn, params, *, rng: jax.Array,
                           num_iterations: int = 20) -> jax.Array:
  """Top eigenvalue of H = ∇²θ loss_fn(θ): `top_eigenpairs` of `make_hvp(loss_fn, params)`.

  Lanczos with full reorthogonalization from a random start (`estimators.top_eigenpairs`,
  k=1): the largest Ritz value of the Krylov space of `num_iterations` Hessian-vector
  products (>= 1; capped at P, where it is exact to rounding).
  """
  return estimators.top_eigenpairs(operators.make_hvp(loss_fn, params), params, k=1, rng=rng,
                                   num_iterations=num_iterations)[0][0]
