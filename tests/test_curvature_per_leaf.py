"""Per-leaf Fisher traces and the Fisher diagonal against dense float64 references, chunked and
on 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import cases
from fisher_jax import curvature
from fisher_jax.curvature import dense


def _leaf_sums(flat, params):
  """Pytree like params: sums of a flat [P] vector over each leaf's entries."""
  return jax.tree.map(jnp.sum, ravel_pytree(params)[1](flat))


def _ours(logits_fn, params, inputs, labels, rng, chunk_size=None, engine='auto'):
  kw = dict(rng=rng, labels=labels, chunk_size=chunk_size, engine=engine)
  out = {}
  for e in curvature.FISHER_ESTIMATORS:
    out[f'trace_{e}'] = curvature.fisher_trace(logits_fn, params, inputs, estimator=e, **kw)
    out[f'leaves_{e}'] = curvature.fisher_trace(logits_fn, params, inputs, estimator=e,
                                                per_leaf=True, **kw)
    out[f'diag_{e}'] = curvature.fisher_diagonal(logits_fn, params, inputs, estimator=e, **kw)
  out['batch'] = curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng)
  out['batch_leaves'] = curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng,
                                                     per_leaf=True)
  return out


def _dense(logits_fn, params, inputs, labels, rng):
  """Dense twins: the exact blocks and diagonal from the Fisher matrix, the others from the
  per-example gradients at the same labels."""
  _, unravel = ravel_pytree(params)
  fisher = dense.fisher(logits_fn, params, inputs)
  y_hat = dense.sampled_labels(logits_fn, params, inputs, rng)
  out = {'leaves_exact': dense.block_traces(fisher, params),
         'diag_exact': unravel(jnp.diag(fisher))}
  for e, y in (('sampled', y_hat), ('empirical', labels)):
    squares = dense.per_example_grads(logits_fn, params, inputs, y) ** 2
    out[f'leaves_{e}'] = _leaf_sums(jnp.mean(squares, axis=0), params)
    out[f'diag_{e}'] = dense.fisher_diagonal(logits_fn, params, inputs, estimator=e, rng=rng,
                                             labels=labels)
  mean_grad = jnp.mean(dense.per_example_grads(logits_fn, params, inputs, y_hat), axis=0)
  out['batch_leaves'] = _leaf_sums(mean_grad ** 2, params)
  return out


@pytest.mark.parametrize('engine', ['layers', 'vmap'])
@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_per_leaf_traces_and_diagonals_match_dense(x64, kind, engine):
  """Per-leaf Tr(F) of every estimator equals the dense blocks' traces and diag F the dense
  diagonal (rtol 1e-10); the leaves sum to the totals (rtol 1e-12), Tr(F_B)'s too; chunks of 3
  change nothing."""
  logits_fn, params, inputs, labels = cases.fisher_problem(kind)
  rng = jax.random.PRNGKey(3)
  fn = cases.cheap_jit(functools.partial(_ours, logits_fn, engine=engine),
                       static_argnames='chunk_size')
  got = fn(params, inputs, labels, rng)
  want = cases.cheap_jit(functools.partial(_dense, logits_fn))(params, inputs, labels, rng)
  for name in want:
    for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14, err_msg=name)
  for e in curvature.FISHER_ESTIMATORS:
    assert jax.tree.structure(got[f'leaves_{e}']) == jax.tree.structure(params)
    np.testing.assert_allclose(sum(jax.tree.leaves(got[f'leaves_{e}'])), got[f'trace_{e}'],
                               rtol=1e-12)
    np.testing.assert_allclose(sum(jnp.sum(d) for d in jax.tree.leaves(got[f'diag_{e}'])),
                               got[f'trace_{e}'], rtol=1e-12)
  np.testing.assert_allclose(sum(jax.tree.leaves(got['batch_leaves'])), got['batch'],
                             rtol=1e-12)
  if kind == 'mlp':
    chunked = fn(params, inputs, labels, rng, chunk_size=3)
    for name in got:
      np.testing.assert_allclose(jax.tree.leaves(chunked[name])[0], jax.tree.leaves(got[name])[0],
                                 rtol=1e-12, err_msg=name)


def test_per_leaf_and_diagonal_on_8_devices_give_one_device_numbers():
  """Under jit with the CNN batch sharded over 8 devices and inside shard_map (float32, 1e-5)."""
  logits_fn, params, inputs, labels = cases.fisher_problem('cnn', batch=16)
  rng = jax.random.PRNGKey(9)

  def fn(params, inputs, labels, rng):
    return {'leaves': curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled',
                                             rng=rng, per_leaf=True),
            'diag': curvature.fisher_diagonal(logits_fn, params, inputs, estimator='exact'),
            'batch': curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng,
                                                  per_leaf=True)}
  single = cases.cheap_jit(fn)(params, inputs, labels, rng)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rep, batch = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec('data')
  args = (jax.device_put(params, jax.sharding.NamedSharding(mesh, rep)),
          jax.device_put(inputs, jax.sharding.NamedSharding(mesh, batch)),
          jax.device_put(labels, jax.sharding.NamedSharding(mesh, batch)), rng)
  in_specs = (rep, batch, batch, rep)
  for layout, f in (('jit', fn), ('shard_map', jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                                                              out_specs=rep))):
    got = cases.cheap_jit(f)(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(single), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.max(np.abs(b)), err_msg=layout)


def test_fisher_diagonal_names_itself_in_errors():
  logits_fn, params, inputs, _ = cases.fisher_problem('mlp')
  with pytest.raises(ValueError, match=r"fisher_diagonal\(estimator='sampled'\) needs rng"):
    curvature.fisher_diagonal(logits_fn, params, inputs, estimator='sampled')
  with pytest.raises(ValueError, match="'sampled', 'exact', 'empirical'"):
    curvature.fisher_diagonal(logits_fn, params, inputs, estimator='kfac')
