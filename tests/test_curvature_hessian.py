"""Hessian products, trace estimators and top eigenvalue against dense float64 references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import cases
from fisher_jax import curvature
from fisher_jax.curvature import dense

RTOL = 1e-8


def _dense(fn, loss_fn, *args):
  """A dense reference under jit (eager jax.hessian of a CNN is very slow)."""
  return jax.jit(fn, static_argnums=0)(loss_fn, *args)


def _loss_problem(kind, batch=6):
  logits_fn, params, inputs, labels = cases.fisher_problem(kind, batch=batch)
  return curvature.make_loss_fn(logits_fn, inputs, labels), params


def _quadratic(eigenvalues, seed=0):
  """loss(θ) = ½ θᵀ A θ on a dict pytree, A = U diag(eigenvalues) Uᵀ: (loss_fn, params, A)."""
  n = len(eigenvalues)
  u, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  a = jnp.asarray(u @ np.diag(eigenvalues) @ u.T)
  params = {'w': jnp.ones((n - 3,), jnp.float64), 'b': jnp.ones((3,), jnp.float64)}
  loss_fn = lambda p: 0.5 * ravel_pytree(p)[0] @ a @ ravel_pytree(p)[0]
  return loss_fn, params, a


@pytest.mark.parametrize('kind', ['mlp', pytest.param('cnn', marks=pytest.mark.slow)])
def test_products_basis_trace_and_lanczos_match_the_dense_hessian(x64, kind):
  """Against the dense H (jax.hessian): H v; v_nᵀ H v_n for Rademacher probes; the sum of
  eᵀ H e over all P basis vectors is Tr(H) exactly; Lanczos with P iterations gives the top
  eigenvalue."""
  loss_fn, params = _loss_problem(kind)
  flat, unravel = ravel_pytree(params)
  size = flat.size
  h = _dense(dense.hessian, loss_fn, params)
  v = jax.random.normal(jax.random.PRNGKey(7), (size,), flat.dtype)
  signs = jax.random.rademacher(jax.random.PRNGKey(4), (5, size), flat.dtype)

  @jax.jit
  def run(params, v, signs, rng):
    product = ravel_pytree(curvature.hvp(loss_fn, params, unravel(v)))[0]
    hvp = curvature.make_hvp(loss_fn, params)  # One linearization, vmapped over the vectors.
    quadratic_forms = jax.vmap(lambda u: optax.tree.vdot(u, hvp(u)))
    forms = quadratic_forms(jax.vmap(unravel)(signs))
    basis_trace = jnp.sum(quadratic_forms(jax.vmap(unravel)(jnp.eye(size, dtype=flat.dtype))))
    top = curvature.hessian_top_eigenvalue(loss_fn, params, rng=rng, num_iterations=size)
    return product, forms, basis_trace, top
  product, forms, basis_trace, top = run(params, v, signs, jax.random.PRNGKey(0))
  np.testing.assert_allclose(product, h @ v, rtol=RTOL, atol=RTOL * float(jnp.max(jnp.abs(h @ v))))
  np.testing.assert_allclose(forms, jnp.einsum('np,pq,nq->n', signs, h, signs), rtol=RTOL)
  np.testing.assert_allclose(basis_trace, jnp.trace(h), rtol=RTOL)
  np.testing.assert_allclose(top, jnp.linalg.eigvalsh(h)[-1], rtol=RTOL)
  # hessian_trace('hutchinson') is the mean of such forms: its estimate is finite, stderr > 0.
  estimate, stderr = jax.jit(functools.partial(curvature.hessian_trace, loss_fn, num_probes=7))(
      params, rng=jax.random.PRNGKey(1))
  assert np.isfinite(estimate) and stderr > 0


@pytest.mark.parametrize('method,num_probes', [('hutchinson', 2000), ('hutch++', 150)])
def test_stochastic_trace_converges_within_four_standard_errors(x64, method, num_probes):
  """The estimate is within 4 of its standard errors of Tr(H), and that standard error is below
  10% of Tr(H) (so an estimator off by more than 40% fails). The MLP has P = 64; 150 hutch++
  products sketch 50 directions, so its residual part still carries noise."""
  loss_fn, params = _loss_problem('mlp')
  exact = float(_dense(dense.hessian_trace, loss_fn, params))
  fn = jax.jit(functools.partial(curvature.hessian_trace, loss_fn, num_probes=num_probes,
                                 method=method))
  estimate, stderr = fn(params, rng=jax.random.PRNGKey(0))
  assert abs(float(estimate) - exact) < 4 * float(stderr)
  assert float(stderr) < 0.1 * abs(exact)


def test_hutch_plus_plus_is_exact_for_low_rank_hessians(x64):
  """Rank 4 and a sketch of 5 products: Q spans range(H), the residual part vanishes."""
  loss_fn, params, a = _quadratic([5.0, 3.0, -2.0, 1.0] + [0.0] * 16)
  estimate, stderr = curvature.hessian_trace(loss_fn, params, rng=jax.random.PRNGKey(3),
                                             num_probes=15, method='hutch++')
  np.testing.assert_allclose(estimate, jnp.trace(a), rtol=RTOL)
  assert float(stderr) < 1e-10


def test_hutch_plus_plus_beats_hutchinson_on_a_decaying_spectrum(x64):
  """Eigenvalues 1/i², 60 parameters, 18 products: mean absolute error over 40 seeds."""
  loss_fn, params, a = _quadratic(1.0 / np.arange(1, 61) ** 2)
  exact = float(jnp.trace(a))
  errors = {}
  for method in curvature.HESSIAN_TRACE_METHODS:
    fn = jax.jit(jax.vmap(lambda r: curvature.hessian_trace(loss_fn, params, rng=r,
                                                            num_probes=18, method=method)[0]))
    errors[method] = float(jnp.mean(jnp.abs(fn(jax.random.split(jax.random.PRNGKey(0), 40))
                                            - exact)))
  assert errors['hutch++'] < 0.5 * errors['hutchinson'], errors


def test_top_eigenpairs_of_the_hessian_match_the_dense_eigenvalues(x64):
  """Lanczos on make_hvp with P iterations: the 3 largest eigenvalues of the dense Hessian
  (negative ones in the spectrum too), and hessian_top_eigenvalue is the first of them."""
  loss_fn, params, _ = _quadratic([10.0, 5.0, 4.0, -3.0] + [1.0] * 16)
  values, _ = curvature.top_eigenpairs(curvature.make_hvp(loss_fn, params), params, k=3,
                                       rng=jax.random.PRNGKey(0), num_iterations=20)
  expected = dense.hessian_eigenvalues(loss_fn, params)[::-1][:3]
  np.testing.assert_allclose(values, expected, rtol=RTOL)
  top = curvature.hessian_top_eigenvalue(loss_fn, params, rng=jax.random.PRNGKey(0),
                                         num_iterations=20)
  np.testing.assert_allclose(top, 10.0, rtol=RTOL)


def test_lanczos_survives_breakdown_and_negative_spectra(x64):
  """Rank-3 Hessian, 12 iterations: the Krylov space is exhausted after 3; no NaN, no
  spurious zero Ritz value when every eigenvalue is negative."""
  for spectrum, top in (([4.0, 2.0, 1.0] + [0.0] * 17, 4.0),
                        ([-1.0, -2.0, -4.0, -0.5] * 5, -0.5)):
    loss_fn, params, _ = _quadratic(spectrum)
    got = curvature.hessian_top_eigenvalue(loss_fn, params, rng=jax.random.PRNGKey(1),
                                           num_iterations=12)
    np.testing.assert_allclose(got, top, rtol=1e-7)


def test_hessian_trace_under_jit_with_sharded_inputs():
  logits_fn, params, inputs, labels = cases.fisher_problem('cnn', batch=32)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  def measure(p, x, y, rng):
    return curvature.hessian_trace(curvature.make_loss_fn(logits_fn, x, y), p, rng=rng,
                                   num_probes=4)

  rng = jax.random.PRNGKey(0)
  got = jax.jit(measure)(params, jax.device_put(inputs, shard), jax.device_put(labels, shard),
                         rng)
  want = jax.jit(measure)(params, inputs, labels, rng)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_bad_methods_and_counts_raise_value_errors():
  loss_fn, params = _loss_problem('mlp')
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="'hutchinson', 'hutch\\+\\+'"):
    curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=4, method='exact')
  with pytest.raises(ValueError, match='num_probes'):
    curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=2, method='hutch++')
  with pytest.raises(ValueError, match='num_iterations'):
    curvature.hessian_top_eigenvalue(loss_fn, params, rng=rng, num_iterations=0)
