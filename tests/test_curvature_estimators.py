"""fisher_vp and the estimators on any operator (trace, diagonal, eigenpairs, spectral density)
against dense float64 references (fisher_jax.curvature.dense), and on 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import cases
from fisher_jax import curvature
from fisher_jax.curvature import dense

K = 5


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0])


@functools.lru_cache(maxsize=None)
def _dense_matrices(kind):
  """(logits_fn, params, inputs, labels, H [P, P], F [P, P]) in float64, jitted once."""
  with jax.enable_x64(True):
    logits_fn, params, inputs, labels = cases.fisher_problem(kind)
    hessian = cases.cheap_jit(
        lambda p, x, y: dense.hessian(curvature.make_loss_fn(logits_fn, x, y), p))
    fisher = cases.cheap_jit(lambda p, x: dense.fisher(logits_fn, p, x))
    return (logits_fn, params, inputs, labels, np.asarray(hessian(params, inputs, labels)),
            np.asarray(fisher(params, inputs)))


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_fisher_vp_and_top_eigenpairs_match_dense(x64, kind):
  """F v = dense GGN @ v (rtol 1e-10); the top 5 eigenvalues of H and F by Lanczos (P
  iterations) equal eigvalsh (rtol 1e-6) with residuals ‖Mu − λu‖ <= 1e-6 ‖M‖."""
  logits_fn, params, inputs, labels, h, f = _dense_matrices(kind)
  size = h.shape[0]
  _, unravel = ravel_pytree(params)
  v = unravel(jax.random.normal(jax.random.PRNGKey(7), (size,), jnp.float64))

  @cases.cheap_jit
  def run(params, inputs, labels, v, rng):
    loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
    fisher = curvature.make_fisher_vp(logits_fn, params, inputs)
    return dict(
        fv=curvature.fisher_vp(logits_fn, params, inputs, v),
        hessian=curvature.top_eigenpairs(curvature.make_hvp(loss_fn, params), params, k=K,
                                         rng=rng, num_iterations=size),
        fisher=curvature.top_eigenpairs(fisher, params, k=K, rng=rng, num_iterations=size))
  out = run(params, inputs, labels, v, jax.random.PRNGKey(0))
  want = f @ _flat(v)
  np.testing.assert_allclose(_flat(out['fv']), want, rtol=1e-10,
                             atol=1e-10 * np.max(np.abs(want)))
  for name, matrix in (('hessian', h), ('fisher', f)):
    values, vectors = out[name]
    np.testing.assert_allclose(values, np.linalg.eigvalsh(matrix)[::-1][:K], rtol=1e-6,
                               err_msg=name)
    u = np.stack([_flat(jax.tree.map(lambda x, j=j: x[j], vectors)) for j in range(K)])
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-10)
    residuals = np.linalg.norm(u @ matrix - np.asarray(values)[:, None] * u, axis=1)
    assert np.all(residuals <= 1e-6 * np.linalg.norm(matrix, 2)), (name, residuals)


def _quadrature_moments(nodes, weights, powers=(0, 1, 2)):
  """[len(powers), N]: each probe's Σ_j w_j θ_j^k."""
  return np.stack([np.sum(weights * nodes ** k, axis=1) for k in powers])


@pytest.mark.parametrize('kind,operator', [('mlp', 'hessian'), ('cnn', 'fisher')])
def test_spectral_density_moments_match_traces_of_powers(x64, kind, operator):
  """SLQ with 300 probes x 12 iterations: ∫λ^j dμ equals tr(M^j)/P for j = 0 (to 1e-10),
  1 and 2 (within 4 standard errors over probes, each below 10% of (tr(M²)/P)^(j/2), the
  spectrum's scale: Tr(H) of the MLP is small beside its spread of eigenvalues). The smoothed
  density integrates to 1 and has the same mean and the variance plus σ². The MLP's
  Fisher has rank <= 21 < 64, so its Lanczos breaks down: still no NaN, weights >= 0."""
  logits_fn, params, inputs, labels, h, f = _dense_matrices(kind)
  matrix = h if operator == 'hessian' else f
  size = matrix.shape[0]

  @cases.cheap_jit
  def run(params, inputs, labels, rng):
    loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
    matvec = (curvature.make_hvp(loss_fn, params) if operator == 'hessian'
              else curvature.make_fisher_vp(logits_fn, params, inputs))
    return curvature.spectral_density(matvec, params, rng=rng, num_probes=300,
                                      num_iterations=12)
  nodes, weights = map(np.asarray, run(params, inputs, labels, jax.random.PRNGKey(2)))
  assert nodes.shape == weights.shape == (300, 12)
  moments = _quadrature_moments(nodes, weights)
  np.testing.assert_allclose(moments[0], 1.0, rtol=1e-10)
  for j in (1, 2):
    exact = np.trace(np.linalg.matrix_power(matrix, j)) / size
    mean, stderr = moments[j].mean(), moments[j].std(ddof=1) / np.sqrt(300)
    assert abs(mean - exact) < 4 * stderr, (j, mean, exact, stderr)
    scale = (np.trace(matrix @ matrix) / size) ** (j / 2)
    assert stderr < 0.1 * scale, (j, stderr, scale)

  sigma = 0.05 * (nodes.max() - nodes.min())
  grid = np.linspace(nodes.min() - 6 * sigma, nodes.max() + 6 * sigma, 4001)
  density = np.asarray(curvature.density_on_grid(nodes, weights, grid, sigma=sigma))
  assert density.min() >= 0
  np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-6)
  mean = moments[1].mean()
  np.testing.assert_allclose(np.trapezoid(grid * density, grid), mean, rtol=1e-6,
                             atol=1e-9 * np.abs(grid).max())
  np.testing.assert_allclose(np.trapezoid(grid ** 2 * density, grid), moments[2].mean()
                             + sigma ** 2, rtol=1e-6)

  # A rank-deficient operator: the Krylov space closes (MLP Fisher, rank <= B (C - 1) = 21).
  low_rank_fn, low_params, low_inputs, _, _, low_f = _dense_matrices('mlp')
  nodes, weights = cases.cheap_jit(lambda p, x, r: curvature.spectral_density(
      curvature.make_fisher_vp(low_rank_fn, p, x), p, rng=r, num_probes=3,
      num_iterations=40))(low_params, low_inputs, jax.random.PRNGKey(1))
  assert np.all(np.isfinite(nodes)) and np.all(np.asarray(weights) >= -1e-12)
  np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-10)
  assert np.max(nodes) <= np.linalg.eigvalsh(low_f)[-1] * (1 + 1e-8)


def test_per_leaf_hessian_trace_sums_to_the_total_and_converges_to_dense_blocks(x64):
  """One set of 2000 probes: the leaves sum to the total estimate (rtol 1e-12) and each leaf
  is within 4 of its standard errors of the trace of H's diagonal block."""
  logits_fn, params, inputs, labels, h, _ = _dense_matrices('mlp')
  blocks = dense.block_traces(h, params)

  @cases.cheap_jit
  def run(params, inputs, labels, rng):
    loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
    total = curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=2000)
    leaves = curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=2000, per_leaf=True)
    chunked = curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=2000,
                                      per_leaf=True, chunk_size=300)
    return total, leaves, chunked
  (total, total_se), (leaves, leaves_se), (chunked, chunked_se) = run(params, inputs, labels,
                                                                       jax.random.PRNGKey(5))
  assert jax.tree.structure(leaves) == jax.tree.structure(params)
  np.testing.assert_allclose(sum(jax.tree.leaves(leaves)), total, rtol=1e-12)
  for got, se, want in zip(jax.tree.leaves(leaves), jax.tree.leaves(leaves_se),
                           jax.tree.leaves(blocks)):
    assert abs(float(got) - float(want)) < 4 * float(se), (got, want, se)
  for a, b in ((chunked, leaves), (chunked_se, leaves_se)):  # chunks merge to the same stats
    np.testing.assert_allclose(jax.tree.leaves(a), jax.tree.leaves(b), rtol=1e-10)
  assert float(total_se) > 0


def test_hutch_plus_plus_per_leaf_is_exact_for_low_rank_operators(x64):
  """Rank 4 and a sketch of 5 products: each leaf's Hutch++ estimate is its block's trace."""
  n = 20
  u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
  a = u[:, :4] @ np.diag([5.0, 3.0, -2.0, 1.0]) @ u[:, :4].T
  params = {'w': jnp.ones((n - 3,), jnp.float64), 'b': jnp.ones((3,), jnp.float64)}
  _, unravel = ravel_pytree(params)
  matvec = lambda v: unravel(jnp.asarray(a) @ ravel_pytree(v)[0])
  estimate, stderr = curvature.trace_estimate(matvec, params, rng=jax.random.PRNGKey(3),
                                              num_probes=15, method='hutch++', per_leaf=True)
  want = dense.block_traces(a, params)
  for key in params:
    np.testing.assert_allclose(estimate[key], want[key], rtol=1e-10, atol=1e-12)
    assert float(stderr[key]) < 1e-10


@pytest.mark.parametrize('operator', ['hessian', 'fisher'])
def test_hutchinson_diagonal_is_within_four_standard_errors(x64, operator):
  """diag M from 400 probes: |estimate − dense| / stderr is below 4 for 99% of the entries and
  1.2 on average (a Gaussian's mean |z| is 0.8); the errors are small against the diagonal."""
  logits_fn, params, inputs, labels, h, f = _dense_matrices('mlp')
  matrix = h if operator == 'hessian' else f

  @cases.cheap_jit
  def run(params, inputs, labels, rng):
    if operator == 'hessian':
      return curvature.hessian_diagonal(curvature.make_loss_fn(logits_fn, inputs, labels),
                                        params, rng=rng, num_probes=400)
    return curvature.diagonal_estimate(curvature.make_fisher_vp(logits_fn, params, inputs),
                                       params, rng=rng, num_probes=400)
  estimate, stderr = run(params, inputs, labels, jax.random.PRNGKey(4))
  assert jax.tree.structure(estimate) == jax.tree.structure(params)
  err = np.abs(_flat(estimate) - np.diag(matrix))
  se = _flat(stderr)
  z = np.where(se > 0, err / np.where(se > 0, se, 1.0), 0.0)
  assert np.all(err[se == 0] < 1e-12)  # rows with no off-diagonal coupling are exact
  assert np.mean(z < 4) >= 0.99 and np.mean(z) < 1.2, (np.mean(z), np.max(z))
  assert np.mean(se) < 0.2 * np.mean(np.abs(np.diag(matrix)))


def test_unrolled_lanczos_gives_the_loops_numbers(x64):
  """unroll=True (no fori_loop: XLA:CPU runs convolutions in loop bodies slowly) changes
  nothing: eigenpairs and quadratures of a 20 x 20 operator equal the loop's (1e-12)."""
  n = 20
  u, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(n, n)))
  a = jnp.asarray(u @ np.diag(np.linspace(-1.0, 3.0, n)) @ u.T)
  params = {'w': jnp.ones((n,), jnp.float64)}
  matvec = lambda v: {'w': a @ v['w']}
  rng = jax.random.PRNGKey(0)
  def eigen_and_density(unroll):
    values, vectors = curvature.top_eigenpairs(matvec, params, k=3, rng=rng, num_iterations=8,
                                               unroll=unroll)
    nodes, weights = curvature.spectral_density(matvec, params, rng=rng, num_probes=2,
                                                num_iterations=6, unroll=unroll)
    return values, vectors['w'], nodes, weights

  for got, want in zip(eigen_and_density(True), eigen_and_density(False)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_estimators_reject_bad_arguments():
  params = {'w': jnp.ones((4,))}
  matvec = lambda v: v
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='num_iterations'):
    curvature.top_eigenpairs(matvec, params, k=3, rng=rng, num_iterations=2)
  with pytest.raises(ValueError, match='k='):
    curvature.top_eigenpairs(matvec, params, k=0, rng=rng, num_iterations=2)
  with pytest.raises(ValueError, match='k=5 exceeds'):
    curvature.top_eigenpairs(matvec, params, k=5, rng=rng, num_iterations=9)
  with pytest.raises(ValueError, match="'hutchinson', 'hutch\\+\\+'"):
    curvature.trace_estimate(matvec, params, rng=rng, num_probes=4, method='exact')
  with pytest.raises(ValueError, match='num_probes'):
    curvature.diagonal_estimate(matvec, params, rng=rng, num_probes=1)
  with pytest.raises(ValueError, match='sigma'):
    curvature.density_on_grid(jnp.ones((1, 2)), jnp.ones((1, 2)) / 2, jnp.zeros(3), sigma=0.0)


# ----------------------------------------------------------------------------- 8 devices


def _operator_quantities(logits_fn, params, inputs, labels, rng, v):
  """Every operator/estimator of this file on one batch, as a flat dict of arrays."""
  loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
  hvp = curvature.make_hvp(loss_fn, params)
  fvp = curvature.make_fisher_vp(logits_fn, params, inputs)
  out = dict(fisher_vp=curvature.fisher_vp(logits_fn, params, inputs, v))
  out['trace_leaves'] = curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=4,
                                                per_leaf=True)
  out['trace_hpp'] = curvature.trace_estimate(fvp, params, rng=rng, num_probes=6,
                                              method='hutch++', per_leaf=True)
  out['hessian_diag'] = curvature.hessian_diagonal(loss_fn, params, rng=rng, num_probes=3)
  out['fisher_eig'] = curvature.top_eigenpairs(fvp, params, k=2, rng=rng, num_iterations=8)[0]
  out['hessian_eig'] = curvature.top_eigenpairs(hvp, params, k=2, rng=rng, num_iterations=8)[0]
  nodes, weights = curvature.spectral_density(hvp, params, rng=rng, num_probes=2,
                                              num_iterations=6)
  out['slq_moments'] = jnp.stack([jnp.sum(weights * nodes ** j, axis=1) for j in (0, 1, 2)])
  return out


def _sharded_args(mesh, params, inputs, labels, rng, v):
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return (jax.device_put(params, replicated), jax.device_put(inputs, batch),
          jax.device_put(labels, batch), rng, jax.device_put(v, replicated))


def _assert_trees_close(got, want, name):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.max(np.abs(b)), err_msg=name)


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_operators_and_estimators_on_8_devices_give_one_device_numbers(kind):
  """Under jit with the batch sharded over 8 devices, with Auto and with Explicit mesh axes:
  the one-device numbers to 1e-5 (float32). The CNN checks the two operators and the products
  mapped over probes (XLA:CPU compiles convolution products slowly, so the CNN runs the
  cheapest estimators only; on an Explicit mesh they map the probes one at a time, where
  vmapping a convolution product raises JAX's ShardingTypeError), the MLP every estimator;
  inside shard_map, fisher_vp is global."""
  logits_fn, params, inputs, labels = cases.fisher_problem(kind, batch=16)
  rng = jax.random.PRNGKey(9)
  v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params)
  if kind == 'mlp':
    fn = functools.partial(_operator_quantities, logits_fn)
  else:
    def fn(params, inputs, labels, rng, v):
      loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
      return dict(fisher_vp=curvature.fisher_vp(logits_fn, params, inputs, v),
                  hvp=curvature.hvp(loss_fn, params, v),
                  diag=curvature.diagonal_estimate(
                      curvature.make_fisher_vp(logits_fn, params, inputs), params, rng=rng,
                      num_probes=2),
                  trace=curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=2))
  single = cases.cheap_jit(fn)(params, inputs, labels, rng, v)
  for axis_type in (jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit):
    mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
    args = _sharded_args(mesh, params, inputs, labels, rng, v)
    sharded = cases.cheap_jit(fn)(*args)
    for name in single:
      _assert_trees_close(sharded[name], single[name], f'{axis_type} {name}')
  rep, batch = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec('data')
  fisher_vp = jax.shard_map(lambda p, x, v: curvature.fisher_vp(logits_fn, p, x, v), mesh=mesh,
                            in_specs=(rep, batch, rep), out_specs=rep)
  _assert_trees_close(cases.cheap_jit(fisher_vp)(*args[:2], args[4]), single['fisher_vp'],
                      'shard_map')
