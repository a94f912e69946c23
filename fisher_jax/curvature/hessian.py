"""Hessian of a scalar loss: products, trace estimators and the top eigenvalue.

`loss_fn(params) -> scalar` is any twice-differentiable function of the parameter pytree θ,
typically the mean loss of a batch, `make_loss_fn(logits_fn, inputs, labels)`; H = ∇²θ loss
[P, P] is never formed. Every method is built on the Hessian-vector product H v, computed
forward-over-reverse (a jvp of the gradient). Several products at the same θ share one
linearization: `jax.linearize(jax.grad(loss_fn), θ)` runs the forward and backward pass once,
then each product costs only the tangent pass, and a batch of probes is one vmapped call.

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
from fisher_jax.curvature.fisher import map_in_chunks

LossFn = Callable[..., jax.Array]

HESSIAN_TRACE_METHODS = ('hutchinson', 'hutch++')
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


def _linearized_hvp(loss_fn, params):
  """v -> H v sharing one forward/backward pass at `params` among all products."""
  return jax.linearize(jax.grad(loss_fn), params)[1]


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
  product = _linearized_hvp(loss_fn, params)
  return map_in_chunks(lambda v: optax.tree.vdot(v, product(v)), probes, chunk_size)


def _rademacher_probes(rng, params, num):
  """Pytree like `params` with leaves [num, ...] of independent ±1 entries."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, (num,) + leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def _check_count(name, value, minimum, method):
  if not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name}={value!r} is too small for method={method!r}; pass an int >= '
                     f'{minimum}.')


def hessian_trace(loss_fn: LossFn, params, *, rng: jax.Array, num_probes: int,
                  method: str = 'hutchinson', chunk_size: Optional[int] = None):
  """Stochastic estimate of Tr(H), H = ∇²θ loss_fn(θ) [P, P], with its standard error.

  'hutchinson': Tr(H) ≈ (1/N) Σ_n v_nᵀ H v_n with N = `num_probes` Rademacher vectors v_n
    (unbiased); the standard error is std_n(v_nᵀ H v_n) / √N (sample std, ddof=1).
  'hutch++' (Meyer et al., 2021), the same N products: N/3 products H S sketch the top of the
    spectrum, Q = orth(H S) [P, N/3]; Tr(H) ≈ Tr(Qᵀ H Q) + (1/M) Σ_m g_mᵀ (I-QQᵀ) H (I-QQᵀ) g_m
    with M = N - 2⌊N/3⌋ further Rademacher g_m. Lower variance when the spectrum decays; the
    standard error is that of the Hutchinson part (conditional on Q). It works on flattened
    parameters and keeps N/3 vectors of size P.

  Args:
    loss_fn: `loss_fn(params) -> scalar`, e.g. `make_loss_fn(logits_fn, inputs, labels)`.
    params: the parameter pytree θ.
    rng: PRNG key for the probes.
    num_probes: N, the number of Hessian-vector products (>= 2; >= 3 for 'hutch++').
    method: 'hutchinson' or 'hutch++'.
    chunk_size: probes per vmapped product ('hutchinson'; bounds memory); None: all at once.

  Returns:
    (estimate, standard_error), two scalars.

  Raises:
    ValueError: unknown method or too few probes.
  """
  if method == 'hutchinson':
    _check_count('num_probes', num_probes, 2, method)
    forms = hessian_quadratic_forms(loss_fn, params, _rademacher_probes(rng, params, num_probes),
                                    chunk_size=chunk_size)
    return jnp.mean(forms), jnp.std(forms, ddof=1) / jnp.sqrt(num_probes)
  if method == 'hutch++':
    _check_count('num_probes', num_probes, 3, method)
    flat, unravel = ravel_pytree(params)
    product = _linearized_hvp(loss_fn, params)
    matmat = jax.vmap(lambda v: ravel_pytree(product(unravel(v)))[0])  # [n, P] -> [n, P]
    num_sketch = num_probes // 3
    num_residual = num_probes - 2 * num_sketch
    k_sketch, k_residual = jax.random.split(rng)
    sketch = jax.random.rademacher(k_sketch, (num_sketch, flat.size), flat.dtype)
    q, _ = jnp.linalg.qr(matmat(sketch).T)  # [P, num_sketch], orthonormal columns
    top = jnp.sum(q.T * matmat(q.T))  # Tr(Qᵀ H Q)
    g = jax.random.rademacher(k_residual, (num_residual, flat.size), flat.dtype)
    g = g - (g @ q) @ q.T  # project out span(Q)
    forms = jnp.sum(g * matmat(g), axis=1)
    return top + jnp.mean(forms), jnp.std(forms, ddof=1) / jnp.sqrt(num_residual)
  raise ValueError(f'method={method!r} is unknown; choose one of {list(HESSIAN_TRACE_METHODS)}.')


def hessian_top_eigenvalue(loss_fn: LossFn, params, *, rng: jax.Array, num_iterations: int = 20,
                           method: str = 'lanczos') -> jax.Array:
  """Top eigenvalue of H = ∇²θ loss_fn(θ) from `num_iterations` Hessian-vector products.

  'lanczos': the largest Ritz value of the Krylov space of the products, with full
    reorthogonalization (stores `num_iterations` vectors of size P); exact once the
    number of iterations reaches P, and converging much faster than power iteration.
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
  _check_count('num_iterations', num_iterations, 1, method)
  flat, unravel = ravel_pytree(params)
  product = _linearized_hvp(loss_fn, params)
  matvec = lambda v: ravel_pytree(product(unravel(v)))[0]
  v0 = jax.random.normal(rng, flat.shape, flat.dtype)
  v0 = v0 / jnp.linalg.norm(v0)

  if method == 'power':
    def power_step(_, carry):
      v, _ = carry
      hv = matvec(v)
      return hv / jnp.linalg.norm(hv), jnp.vdot(v, hv)
    v, _ = jax.lax.fori_loop(0, num_iterations - 1, power_step, (v0, jnp.zeros((), flat.dtype)))
    return jnp.vdot(v, matvec(v))

  k = num_iterations
  tiny = jnp.finfo(flat.dtype).eps

  def lanczos_step(j, carry):
    basis, alphas, betas, alive = carry
    v = basis[j]
    w = matvec(v)
    alpha = jnp.vdot(v, w)
    for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
      w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    # Breakdown (the Krylov space is invariant): later rows stay zero and are masked below.
    next_alive = alive & (beta > tiny * jnp.maximum(jnp.abs(alpha), 1.0))
    basis = basis.at[j + 1].set(jnp.where(next_alive, w / jnp.where(next_alive, beta, 1.0), 0.0))
    return (basis, alphas.at[j].set(jnp.where(alive, alpha, 0.0)),
            betas.at[j].set(jnp.where(next_alive, beta, 0.0)), next_alive)

  basis = jnp.zeros((k + 1, flat.size), flat.dtype).at[0].set(v0)
  init = (basis, jnp.zeros((k,), flat.dtype), jnp.zeros((k,), flat.dtype), jnp.array(True))
  _, alphas, betas, _ = jax.lax.fori_loop(0, k, lanczos_step, init)
  # After a breakdown at step m the tridiagonal matrix splits into the leading m x m block and
  # a decoupled tail; filling the tail's diagonal with alpha_0 (a Rayleigh quotient inside the
  # leading block's spectrum) keeps the largest eigenvalue that of the leading block.
  valid = jnp.arange(k) == 0
  valid = valid | (jnp.cumprod(jnp.concatenate([jnp.ones((1,), bool), betas[:-1] > 0])) > 0)
  diag = jnp.where(valid, alphas, alphas[0])
  tridiagonal = jnp.diag(diag) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  return jnp.linalg.eigvalsh(tridiagonal)[-1]
