"""Fisher quantities and losses against dense float64 references (fisher_jax.curvature.dense)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fisher_jax import curvature, losses
from fisher_jax.curvature import dense

RTOL = 1e-8
NUM_CLASSES = 4


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape((x.shape[0], -1))
    x = jnp.tanh(nn.Dense(6)(x))
    return nn.Dense(NUM_CLASSES)(x)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(3, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.tanh(nn.Conv(4, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(NUM_CLASSES)(x)


def _problem(kind, batch=7, seed=0):
  """(logits_fn, params, inputs [B, ...], labels [B]) in the current default float dtype."""
  dtype = jnp.zeros(()).dtype if not jax.config.jax_enable_x64 else jnp.float64
  model, shape = {'mlp': (_MLP(), (5,)), 'cnn': (_CNN(), (6, 6, 2))}[kind]
  k_x, k_y, k_p = jax.random.split(jax.random.PRNGKey(seed), 3)
  inputs = jax.random.normal(k_x, (batch,) + shape, dtype)
  labels = jax.random.randint(k_y, (batch,), 0, NUM_CLASSES)
  params = model.init(k_p, inputs[:1])['params']
  params = jax.tree.map(lambda p: (2.0 * p).astype(dtype), params)  # sharper softmax
  logits_fn = lambda p, x: model.apply({'params': p}, x)
  return logits_fn, params, inputs, labels


def _jit(fn, logits_fn, *args, **kwargs):
  """Calls `fn(logits_fn, *args, **kwargs)` under jit (string and int options are static)."""
  static = {k: v for k, v in kwargs.items() if isinstance(v, (str, int)) or v is None}
  dynamic = {k: v for k, v in kwargs.items() if k not in static}
  return jax.jit(functools.partial(fn, logits_fn, **static))(*args, **dynamic)


# ----------------------------------------------------------------------------- losses


def test_cross_entropy_and_accuracy_match_definitions(x64):
  logits = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)
  labels = jnp.array([0, 2, 1, 1, 0])
  p = np.exp(np.asarray(logits))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels),
                             -np.log(p[np.arange(5), labels]), rtol=1e-12)
  expected = (np.asarray(logits).argmax(1) == np.asarray(labels)).astype(np.float64)
  np.testing.assert_array_equal(losses.accuracy(logits, labels), expected)
  assert expected.min() == 0.0  # the example has both right and wrong predictions


# ----------------------------------------------------------------------------- Fisher vs dense


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_per_example_grad_sq_norms_match_dense(x64, kind):
  logits_fn, params, inputs, labels = _problem(kind)
  got = _jit(curvature.per_example_grad_sq_norms, logits_fn, params, inputs, labels)
  want = _jit(dense.per_example_grad_sq_norms, logits_fn, params, inputs, labels)
  assert got.shape == (inputs.shape[0],)
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
@pytest.mark.parametrize('estimator', ['sampled', 'exact', 'empirical'])
def test_fisher_trace_matches_dense(x64, kind, estimator):
  logits_fn, params, inputs, labels = _problem(kind)
  rng = jax.random.PRNGKey(3)
  got = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator=estimator, rng=rng,
                               labels=labels)
  want = _jit(dense.fisher_trace, logits_fn, params, inputs, estimator=estimator, rng=rng,
                            labels=labels)
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_sampled_uses_the_contract_labels(x64):
  """'sampled' equals 'empirical' at ŷ = jax.random.categorical(rng, logits) and not at others."""
  logits_fn, params, inputs, _ = _problem('mlp', batch=32)
  rng = jax.random.PRNGKey(11)
  y_hat = jax.random.categorical(rng, logits_fn(params, inputs))
  sampled = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator='sampled', rng=rng)
  at_y_hat = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator='empirical',
                                    labels=y_hat)
  np.testing.assert_allclose(sampled, at_y_hat, rtol=1e-12)
  other = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator='sampled',
                                 rng=jax.random.PRNGKey(12))
  assert abs(float(other) - float(sampled)) > 1e-6 * float(sampled)


def test_sampled_converges_to_exact(x64):
  """The mean of 400 'sampled' draws is within 4 standard errors of 'exact'."""
  logits_fn, params, inputs, labels = _problem('mlp', batch=8)
  exact = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator='exact')
  draw = lambda r: curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled', rng=r)
  draws = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(0), 400))
  mean, stderr = float(jnp.mean(draws)), float(jnp.std(draws)) / np.sqrt(len(draws))
  assert abs(mean - float(exact)) < 4 * stderr
  assert stderr < 0.03 * float(exact)  # tight enough to tell 'exact' from other quantities:
  empirical = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator='empirical',
                   labels=labels)
  assert abs(float(empirical) - float(exact)) > 8 * stderr


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_batch_fisher_trace_and_gradient_norm_match_dense(x64, kind):
  logits_fn, params, inputs, labels = _problem(kind)
  rng = jax.random.PRNGKey(5)
  np.testing.assert_allclose(_jit(curvature.batch_fisher_trace, logits_fn, params, inputs, rng=rng),
                             _jit(dense.batch_fisher_trace, logits_fn, params, inputs, rng=rng),
                             rtol=RTOL)
  np.testing.assert_allclose(_jit(curvature.gradient_norm, logits_fn, params, inputs, labels),
                             _jit(dense.gradient_norm, logits_fn, params, inputs, labels), rtol=RTOL)
  # The norm of the mean gradient, i.e. not squared and not a per-example mean.
  mean_loss_grad = jax.grad(lambda p: jnp.mean(losses.cross_entropy(logits_fn(p, inputs),
                                                                    labels)))(params)
  np.testing.assert_allclose(_jit(curvature.gradient_norm, logits_fn, params, inputs, labels),
                             np.sqrt(sum(np.sum(np.asarray(g) ** 2)
                                         for g in jax.tree.leaves(mean_loss_grad))), rtol=RTOL)


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize('chunk_size', [1, 3, 7, 100])
def test_chunk_size_does_not_change_results(x64, chunk_size):
  logits_fn, params, inputs, labels = _problem('cnn', batch=7)
  rng = jax.random.PRNGKey(2)
  for estimator in curvature.FISHER_ESTIMATORS:
    whole = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator=estimator, rng=rng,
                                   labels=labels)
    chunked = _jit(curvature.fisher_trace, logits_fn, params, inputs, estimator=estimator, rng=rng,
                                     labels=labels, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, err_msg=estimator)
  np.testing.assert_allclose(
      _jit(curvature.per_example_grad_sq_norms, logits_fn, params, inputs, labels,
                                          chunk_size=chunk_size),
      _jit(dense.per_example_grad_sq_norms, logits_fn, params, inputs, labels), rtol=RTOL)


def test_map_in_chunks_keeps_example_order():
  xs = jnp.arange(10.0)
  for chunk_size in (1, 3, 4, 10):
    np.testing.assert_array_equal(curvature.map_in_chunks(lambda x: 2 * x, xs, chunk_size),
                                  2 * xs)


# ----------------------------------------------------------------------------- jit, sharding


def test_jit_with_sharded_inputs_matches_single_device():
  """The training loop jits these with inputs sharded over a 1-D mesh and params replicated."""
  logits_fn, params, inputs, labels = _problem('mlp', batch=32)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  s_inputs, s_labels = jax.device_put(inputs, shard), jax.device_put(labels, shard)
  s_params = jax.device_put(params, rep)
  rng = jax.random.PRNGKey(9)
  for estimator in curvature.FISHER_ESTIMATORS:
    fn = jax.jit(functools.partial(curvature.fisher_trace, logits_fn, estimator=estimator,
                                   chunk_size=8))
    got = fn(s_params, s_inputs, rng=rng, labels=s_labels)
    want = curvature.fisher_trace(logits_fn, params, inputs, estimator=estimator, rng=rng,
                                  labels=labels)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=estimator)
  got = jax.jit(functools.partial(curvature.batch_fisher_trace, logits_fn))(
      s_params, s_inputs, rng=rng)
  np.testing.assert_allclose(got, curvature.batch_fisher_trace(logits_fn, params, inputs,
                                                               rng=rng), rtol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_missing_or_unknown_arguments_raise_value_errors():
  logits_fn, params, inputs, labels = _problem('mlp')
  with pytest.raises(ValueError, match='rng'):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled')
  with pytest.raises(ValueError, match='labels'):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='empirical')
  with pytest.raises(ValueError, match="'sampled', 'exact', 'empirical'"):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='kfac')
  with pytest.raises(ValueError, match='chunk_size'):
    curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels, chunk_size=0)
