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
import optax
from jax.flatten_util import ravel_pytree

from fisher_jax import losses
from fisher_jax.curvature import _devices
from fisher_jax.curvature import estimators
from fisher_jax.curvature import operators

LossFn = Callable[..., jax.Array]

HESSIAN_TRACE_METHODS = estimators.TRACE_METHODS
EIGENVALUE_METHODS = ('lanczos', 'power')


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


def hessian_quadratic_forms(loss_fn: LossFn, params, probes, *,
                            chunk_size: Optional[int] = None) -> jax.Array:
  """vᵀ H v for a batch of probe vectors, sharing one linearization.

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: the parameter pytree θ.
    probes: pytree shaped like `params` with a leading axis of N probes (leaves [N, ...]).
    chunk_size: probes per vmapped product (bounds memory); None: all N at once.

  Returns:
    [N]: v_nᵀ H v_n, each a sum over all P parameters.
  """
  product = operators.make_hvp(loss_fn, params)
  return _devices.map_probes(lambda v: optax.tree.vdot(v, product(v)), probes, params,
                             chunk_size)



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


def hessian_top_eigenvalue(loss_fn: LossFn, params, *, rng: jax.Array, num_iterations: int = 20,
                           method: str = 'lanczos') -> jax.Array:
  """Top eigenvalue of H = ∇²θ loss_fn(θ) from `num_iterations` Hessian-vector products.

  'lanczos': `estimators.top_eigenpairs(make_hvp(loss_fn, params), k=1)`, the largest Ritz
    value of the Krylov space of the products, with full reorthogonalization (stores
    `num_iterations` vectors of size P); exact once the number of iterations reaches P (it is
    capped there), and converging much faster than power iteration.
  'power': power iteration v ← Hv/‖Hv‖ from a random start; returns the Rayleigh quotient vᵀHv
    of the last iterate, which converges to the eigenvalue of largest magnitude (the top one
    unless H has a larger negative eigenvalue).

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: the parameter pytree θ.
    rng: PRNG key for the random start vector.
    num_iterations: number of Hessian-vector products (>= 1).
    method: 'lanczos' or 'power'.

  Returns:
    Scalar eigenvalue estimate.

  Raises:
    ValueError: unknown method or num_iterations < 1.
  """
  if method not in EIGENVALUE_METHODS:
    raise ValueError(f'method={method!r} is unknown; choose one of {list(EIGENVALUE_METHODS)}.')
  product = operators.make_hvp(loss_fn, params)
  if method == 'lanczos':
    values, _ = estimators.top_eigenpairs(product, params, k=1, rng=rng,
                                          num_iterations=num_iterations)
    return values[0]
  if not isinstance(num_iterations, int) or num_iterations < 1:
    raise ValueError(f'num_iterations={num_iterations!r} is too small for method={method!r}; '
                     'pass an int >= 1.')
  flat, unravel = ravel_pytree(params)
  matvec = lambda v: ravel_pytree(product(unravel(v)))[0]
  v0 = jax.random.normal(rng, flat.shape, flat.dtype)
  v0 = v0 / jnp.linalg.norm(v0)

  def power_step(_, v):
    hv = matvec(v)
    return hv / jnp.linalg.norm(hv)
  v = jax.lax.fori_loop(0, num_iterations - 1, power_step, v0)
  return jnp.vdot(v, matvec(v))
