"""Estimators on any symmetric curvature operator: trace, diagonal, top eigenpairs, spectrum.

Every function takes `matvec: v -> M v` on pytrees shaped like `params` (the Hessian from
`operators.make_hvp`, the Fisher from `operators.make_fisher_vp`, or any symmetric linear map of
your own) and never forms M [P, P]. Costs are counted in products M v; the estimators vmap the
products over probes, so a linearized `matvec` shares one forward (and backward) pass.

* `trace_estimate`: Hutchinson, Tr(M) ≈ (1/N) Σ_n v_nᵀ M v_n over Rademacher v_n, or Hutch++
  (Meyer et al., 2021). `per_leaf=True` splits the same products into the traces of M's
  diagonal blocks, one per parameter leaf: v_nᵀ M v_n = Σ_leaves v_n[l]ᵀ (M v_n)[l], and
  E[v[l]ᵀ (M v)[l]] = Tr(M_ll), so the leaves sum to the total at no extra cost.
* `diagonal_estimate`: Hutchinson for the diagonal, diag M ≈ (1/N) Σ_n v_n ⊙ M v_n (Bekas et
  al., 2007), with an elementwise standard error.
* `top_eigenpairs`: Lanczos with full reorthogonalization (the Ritz pairs of the Krylov space).
* `spectral_density`: stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al., 2019):
  per probe, the m-point Gauss quadrature of the spectral measure of M seen from the probe;
  `density_on_grid` smooths it with Gaussians into a density on a grid.

Lanczos details (shared by eigenpairs and quadrature): the basis is reorthogonalized against all
previous vectors twice per step ("twice is enough"), so it stays orthonormal in floating point.
When the Krylov space becomes invariant (β_j = 0: the start vector lies in an invariant subspace,
e.g. of a low-rank Fisher), the next vector is a random one orthogonal to the basis and β_j is
kept 0, so the tridiagonal matrix T = Qᵀ M Q splits into blocks. Ritz values then stay genuine,
`num_iterations` = P gives M's whole spectrum, and the quadrature weights of the later blocks
(e_1's components there) are exactly zero. `num_iterations` is capped at P.
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fisher_jax.curvature import _devices


Matvec = Callable[..., object]

TRACE_METHODS = ('hutchinson', 'hutch++')


def _check_count(name, value, minimum, what):
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{name}={value!r} is too small for {what}; pass an int >= {minimum}.')


def rademacher_probes(rng: jax.Array, params, num: int):
  """Pytree like `params` with leaves [num, ...] of independent ±1 entries."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, (num,) + leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def _leaf_sums(tree):
  """Each leaf summed over all its axes but a leading one: leaves [N, ...] -> [N]."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0], -1).sum(axis=1), tree)


def _mean_and_stderr(fn: Callable, probes, chunk_size: Optional[int], like):
  """Mean over the N probes of `fn(probe)` (a pytree) and its standard error std/√N (ddof 1).

  The probes of a chunk are mapped by `_devices.map_probes` (vmapped; one at a time on an
  Explicit mesh, where `like`, the parameters, tell).

  With `chunk_size`, `chunk_size` probes are vmapped at a time and the chunks' means and sums
  of squared deviations are merged (Chan et al.), so memory holds one chunk's products.
  """
  num = jax.tree.leaves(probes)[0].shape[0]

  def stats(chunk):  # (count, mean, sum of squared deviations) of one vmapped chunk
    values = _devices.map_probes(fn, chunk, like)
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), values)
    m2 = jax.tree.map(lambda x, m: jnp.sum((x - m) ** 2, axis=0), values, mean)
    return jax.tree.leaves(chunk)[0].shape[0], mean, m2

  def merge(a, b):
    (na, mean_a, m2_a), (nb, mean_b, m2_b) = a, b
    n = na + nb
    delta = jax.tree.map(jnp.subtract, mean_b, mean_a)
    mean = jax.tree.map(lambda m, d: m + d * (nb / n), mean_a, delta)
    m2 = jax.tree.map(lambda x, y, d: x + y + d ** 2 * (na * nb / n), m2_a, m2_b, delta)
    return n, mean, m2

  if chunk_size is None or chunk_size >= num:
    _, mean, m2 = stats(probes)
  else:
    chunks, rest = _devices.split_chunks(probes, chunk_size)
    first = stats(jax.tree.map(lambda x: x[0], chunks))

    def body(acc, chunk_index):  # chunk i + 1 joins the merged statistics of i + 1 chunks
      index, chunk = chunk_index
      count = (index + 1) * chunk_size
      _, mean, m2 = merge((count, acc[0], acc[1]), stats(chunk))
      return (mean, m2), None
    indices = jnp.arange(num // chunk_size - 1, dtype=jax.tree.leaves(first[1])[0].dtype)
    (mean, m2), _ = jax.lax.scan(body, first[1:],
                                 (indices, jax.tree.map(lambda x: x[1:], chunks)))
    if rest is not None:
      _, mean, m2 = merge((num // chunk_size * chunk_size, mean, m2), stats(rest))
  stderr = jax.tree.map(lambda x: jnp.sqrt(x / (num - 1) / num), m2)
  return mean, stderr


def _flat_matvec(matvec, params):
  """`(flat [P], unravel, f -> M f)`: the parameters and `matvec` on flat vectors [P]."""
  flat, unravel = ravel_pytree(params)
  return flat, unravel, lambda f: ravel_pytree(matvec(unravel(f)))[0]


def _tree_sum(tree):
  return sum(jax.tree.leaves(tree))


def trace_estimate(matvec: Matvec, params, *, rng: jax.Array, num_probes: int,
                   method: str = 'hutchinson', per_leaf: bool = False,
                   chunk_size: Optional[int] = None):
  """Stochastic estimate of Tr(M) for a symmetric `matvec: v -> M v`, with its standard error.

  'hutchinson': Tr(M) ≈ (1/N) Σ_n v_nᵀ M v_n over N = `num_probes` Rademacher vectors
    (unbiased); the standard error is std_n(v_nᵀ M v_n) / √N (ddof=1).
  'hutch++' (Meyer et al., 2021), the same N products: N/3 products M S sketch the top of the
    spectrum, Q = orth(M S) [P, N/3]; Tr(M) ≈ Tr(Qᵀ M Q) + (1/K) Σ_k h_kᵀ M h_k with
    h_k = (I − QQᵀ) g_k for K = N − 2⌊N/3⌋ further Rademacher g_k. Much lower error when the
    spectrum decays; the standard error is that of the second, random part (given Q). It works
    on flattened parameters and keeps N/3 vectors of size P.

  Args:
    matvec: `v -> M v` on params-shaped pytrees, M symmetric (e.g. `make_hvp(loss_fn, params)`).
    params: a pytree with the shapes and dtypes of M's vectors (the parameters θ).
    rng: PRNG key for the probes.
    num_probes: N, the number of products M v (>= 2; >= 3 for 'hutch++').
    method: 'hutchinson' or 'hutch++'.
    per_leaf: also split the estimate into the parameter leaves' diagonal blocks: then the
      estimate and the standard error are pytrees like `params` with scalar leaves, the leaf l
      estimating Tr(M_ll) from the same products (the leaves sum to the total estimate).
    chunk_size: probes per vmapped product ('hutchinson'; bounds memory); None: all at once.

  Returns:
    (estimate, standard_error): two scalars, or two pytrees of scalars with `per_leaf`.

  Raises:
    ValueError: unknown method or too few probes.
  """
  if method == 'hutchinson':
    _check_count('num_probes', num_probes, 2, f'method={method!r}')
    probes = rademacher_probes(rng, params, num_probes)

    def forms(v):
      blocks = jax.tree.map(lambda a, b: jnp.vdot(a, b), v, matvec(v))
      return (blocks, _tree_sum(blocks)) if per_leaf else _tree_sum(blocks)
    mean, stderr = _mean_and_stderr(forms, probes, chunk_size, params)
    return (mean[0], stderr[0]) if per_leaf else (mean, stderr)
  if method == 'hutch++':
    _check_count('num_probes', num_probes, 3, f'method={method!r}')
    flat, unravel, flat_matvec = _flat_matvec(matvec, params)
    matmat = lambda vs: _devices.map_probes(flat_matvec, vs, params)  # noqa: E731  [n, P]
    num_sketch = num_probes // 3
    num_residual = num_probes - 2 * num_sketch
    k_sketch, k_residual = jax.random.split(rng)
    sketch = jax.random.rademacher(k_sketch, (num_sketch, flat.size), flat.dtype)
    q, _ = jnp.linalg.qr(matmat(sketch).T)  # [P, num_sketch], orthonormal columns
    g = jax.random.rademacher(k_residual, (num_residual, flat.size), flat.dtype)
    g = g - (g @ q) @ q.T  # project out span(Q)
    top = jnp.sum(q.T * matmat(q.T), axis=0)  # [P]: Σ_j q_j ⊙ M q_j, sums to Tr(Qᵀ M Q)
    residual = g * matmat(g)  # [K, P]: h_k ⊙ M h_k
    if not per_leaf:
      residual_forms = jnp.sum(residual, axis=1)
      return (jnp.sum(top) + jnp.mean(residual_forms),
              jnp.std(residual_forms, ddof=1) / math.sqrt(num_residual))
    top_blocks = jax.tree.map(jnp.sum, unravel(top))
    leaf_forms = _leaf_sums(jax.vmap(unravel)(residual))  # leaves [K]
    estimate = jax.tree.map(lambda t, f: t + jnp.mean(f), top_blocks, leaf_forms)
    return estimate, jax.tree.map(lambda f: jnp.std(f, ddof=1) / math.sqrt(num_residual),
                                  leaf_forms)
  raise ValueError(f'method={method!r} is unknown; choose one of {list(TRACE_METHODS)}.')


def diagonal_estimate(matvec: Matvec, params, *, rng: jax.Array, num_probes: int,
                      chunk_size: Optional[int] = None):
  """Hutchinson estimate of diag M, (1/N) Σ_n v_n ⊙ M v_n over N Rademacher vectors v_n.

  Unbiased: E[v ⊙ M v]_p = Σ_q M_pq E[v_p v_q] = M_pp. The elementwise standard error is
  std_n(v_n ⊙ M v_n) / √N (ddof=1). Costs N products M v.

  Args:
    matvec: `v -> M v` on params-shaped pytrees.
    params: a pytree with the shapes and dtypes of M's vectors.
    rng: PRNG key for the probes.
    num_probes: N >= 2.
    chunk_size: probes per vmapped product (bounds memory); None: all at once.

  Returns:
    (estimate, standard_error), pytrees like `params`.
  """
  _check_count('num_probes', num_probes, 2, 'a diagonal estimate')
  probes = rademacher_probes(rng, params, num_probes)
  return _mean_and_stderr(lambda v: jax.tree.map(jnp.multiply, v, matvec(v)), probes,
                          chunk_size, params)


def _lanczos(flat_matvec, v0, num_iterations, rng, unroll=False):
  """m = num_iterations steps of Lanczos from the unit vector v0 [P].

  Returns (alphas [m], betas [m - 1], basis [m, P]) with T = tridiag(betas, alphas, betas) =
  basis M basisᵀ and orthonormal basis rows (random restarts where the Krylov space closes;
  their β is 0, see the module docstring).
  """
  size, dtype = v0.shape[0], v0.dtype
  eps = jnp.finfo(dtype).eps

  def orthogonalize(basis, w):
    for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
      w = w - basis.T @ (basis @ w)
    return w

  def step(j, carry):
    basis, alphas, betas, scale = carry
    v = basis[j]
    w = flat_matvec(v)
    alpha = jnp.vdot(v, w)
    w = orthogonalize(basis, w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
    alive = beta > 10 * eps * scale
    fresh = orthogonalize(basis, jax.random.normal(jax.random.fold_in(rng, j), (size,), dtype))
    nxt = jnp.where(alive, w, fresh)
    norm = jnp.linalg.norm(nxt)
    nxt = jnp.where(norm > 0, nxt / jnp.where(norm > 0, norm, 1.0), 0.0)
    return (basis.at[j + 1].set(nxt), alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(alive, beta, 0.0)), scale)

  basis = jnp.zeros((num_iterations + 1, size), dtype).at[0].set(v0)
  init = (basis, jnp.zeros((num_iterations,), dtype), jnp.zeros((num_iterations,), dtype),
          jnp.zeros((), dtype))
  basis, alphas, betas, _ = jax.lax.fori_loop(0, num_iterations, step, init, unroll=unroll)
  return alphas, betas[:-1], basis[:-1]


def _tridiagonal(alphas, betas):
  return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _iterations(num_iterations, size, minimum, what):
  _check_count('num_iterations', num_iterations, minimum, what)
  return min(num_iterations, size)


def top_eigenpairs(matvec: Matvec, params, *, k: int, rng: jax.Array, num_iterations: int,
                   unroll: bool = False):
  """The k largest eigenvalues of a symmetric `matvec: v -> M v` and their eigenvectors.

  Lanczos with full reorthogonalization from a random unit start vector: m = `num_iterations`
  products build an orthonormal basis Q of the Krylov space, T = Qᵀ M Q is tridiagonal, and
  the Ritz pairs (θ_j, Q s_j) of T's eigenpairs (θ_j, s_j) approximate M's. The largest converge
  first; at m = P (m is capped at P) they are M's eigenpairs to rounding. Memory: m + 1
  vectors of size P.

  Args:
    matvec: `v -> M v` on params-shaped pytrees, M symmetric.
    params: a pytree with the shapes and dtypes of M's vectors.
    k: how many eigenpairs (>= 1).
    rng: PRNG key for the start vector (and restarts).
    num_iterations: m >= k products M v.
    unroll: unroll the m steps at trace time instead of a `fori_loop` (longer compiles; faster
      on XLA:CPU, which runs convolutions inside a loop body slowly).

  Returns:
    (eigenvalues [k] in descending order, eigenvectors): a pytree like `params` whose leaves
    have a leading axis k, eigenvector j being unit-norm over all leaves together.

  Raises:
    ValueError: k < 1 or num_iterations < k.
  """
  _check_count('k', k, 1, 'top_eigenpairs')
  flat, unravel, flat_mv = _flat_matvec(matvec, params)
  if k > flat.size:
    raise ValueError(f'k={k} exceeds the {flat.size} parameters; pass k <= {flat.size}.')
  m = _iterations(num_iterations, flat.size, k, f'k={k} eigenpairs')
  k_start, k_restart = jax.random.split(rng)
  v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
  alphas, betas, basis = _lanczos(flat_mv, v0 / jnp.linalg.norm(v0), m, k_restart, unroll)
  values, vectors = jnp.linalg.eigh(_tridiagonal(alphas, betas))
  values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
  return values, jax.vmap(unravel)((basis.T @ vectors).T)


def spectral_density(matvec: Matvec, params, *, rng: jax.Array, num_probes: int,
                     num_iterations: int, unroll: bool = False):
  """Stochastic Lanczos quadrature of the spectral density of a symmetric `matvec`.

  The spectral density of M [P, P] is μ = (1/P) Σ_p δ(λ − λ_p). For a Rademacher probe v
  (‖v‖² = P), m Lanczos steps from v/‖v‖ give T = S diag(θ) Sᵀ, and the Gauss quadrature with
  nodes θ_j and weights w_j = S_1j² satisfies Σ_j w_j f(θ_j) = vᵀ f(M) v / P for every
  polynomial f of degree <= 2m − 1; its expectation over v is ∫ f dμ = Tr f(M) / P. The
  estimate of μ is the average over the N probes of Σ_j w_nj δ(λ − θ_nj) (each probe's weights
  sum to 1). Costs N·m products, vmapped over the probes (one probe at a time on a mesh with
  Explicit axes, see `_devices.map_probes`).

  Args:
    matvec: `v -> M v` on params-shaped pytrees, M symmetric.
    params: a pytree with the shapes and dtypes of M's vectors.
    rng: PRNG key for the probes.
    num_probes: N >= 1.
    num_iterations: m >= 1 Lanczos steps per probe (capped at P).
    unroll: unroll the m steps at trace time (see `top_eigenpairs`).

  Returns:
    (nodes [N, m], weights [N, m]); see `density_on_grid` and the moments
    ∫ λ^j dμ ≈ mean_n Σ_i weights[n, i] nodes[n, i]^j.
  """
  _check_count('num_probes', num_probes, 1, 'spectral_density')
  flat, _, flat_mv = _flat_matvec(matvec, params)
  m = _iterations(num_iterations, flat.size, 1, 'spectral_density')
  k_probe, k_restart = jax.random.split(rng)
  starts = jax.random.rademacher(k_probe, (num_probes, flat.size), flat.dtype)
  starts = starts / math.sqrt(flat.size)

  def quadrature(v0, key):
    alphas, betas, _ = _lanczos(flat_mv, v0, m, key, unroll)
    nodes, vectors = jnp.linalg.eigh(_tridiagonal(alphas, betas))
    return nodes, vectors[0] ** 2

  return _devices.map_probes(lambda start_key: quadrature(*start_key),
                             (starts, jax.random.split(k_restart, num_probes)), params)


def density_on_grid(nodes: jax.Array, weights: jax.Array, grid: jax.Array, *,
                    sigma: float) -> jax.Array:
  """The SLQ estimate smoothed by Gaussians of width `sigma`, evaluated on `grid`.

  ρ(t) = (1/N) Σ_n Σ_j w_nj φ_σ(t − θ_nj) with φ_σ the normal density of standard deviation
  σ (as in PyHessian and Ghorbani et al., 2019). Each probe's weights sum to 1, so ∫ρ = 1 over
  the real line; on a grid covering [min θ − 5σ, max θ + 5σ] the trapezoid integral is 1 to
  about 1e-6.

  Args:
    nodes: [N, m] quadrature nodes from `spectral_density`.
    weights: [N, m] quadrature weights.
    grid: [G] points t.
    sigma: the Gaussian width (> 0), in the units of the eigenvalues.

  Returns:
    [G] density values.
  """
  if not sigma > 0:
    raise ValueError(f'sigma={sigma!r} must be positive (the Gaussian width in eigenvalue '
                     'units).')
  z = (grid[:, None, None] - nodes[None]) / sigma
  phi = jnp.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
  return jnp.sum(phi * weights[None], axis=(1, 2)) / nodes.shape[0]
