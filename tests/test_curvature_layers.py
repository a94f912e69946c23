"""The 'layers' engine of the per-example functions (per-example gradients from each layer's
inputs and output gradients) against dense float64 references, and the models it leaves to
the vmap engine."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import cases
from fisher_jax import curvature, models
from fisher_jax.curvature import _layers, dense

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


class ConvZoo(nn.Module):
  """Every layer layout the engine handles, in float64: strides, VALID, explicit and SAME
  padding, kernel dilation, rectangular and int kernels, no bias, a 1-D convolution, a dense
  layer on [B, T, D] tokens, BatchNorm with running averages (with and without a scale, and
  with no parameters)."""

  @nn.compact
  def __call__(self, x):  # [B, 7, 6, 2]
    x = nn.Conv(3, (3, 2), strides=(2, 1), padding='VALID', **F64)(x)
    x = jnp.tanh(nn.BatchNorm(use_running_average=True, **F64)(x))
    x = jnp.tanh(nn.Conv(3, (2, 2), padding=((1, 0), (2, 1)), kernel_dilation=(1, 2),
                         use_bias=False, **F64)(x))
    x = nn.Conv(2, (3, 3), strides=2, use_bias=False, **F64)(x)  # SAME
    x = jnp.tanh(nn.BatchNorm(use_running_average=True, use_scale=False, **F64)(x))
    x = nn.BatchNorm(use_running_average=True, use_scale=False, use_bias=False, **F64)(x)
    b = x.shape[0]
    x = jnp.tanh(nn.Conv(2, (2,), strides=2, padding=1, **F64)(x.reshape((b, -1, 2))))
    x = jnp.tanh(nn.Dense(3, **F64)(x))  # on tokens [B, T, 2]
    return nn.Dense(4, use_bias=False, **F64)(x.reshape((b, -1)))


def _zoo_problem(batch=6):
  model = ConvZoo()
  rng = np.random.default_rng(1)
  inputs = jnp.asarray(rng.normal(size=(batch, 7, 6, 2)))
  labels = jnp.asarray(rng.integers(0, 4, size=batch), jnp.int32)
  variables = cases.cheap_jit(model.init)(jax.random.key(0), inputs)
  params = jax.tree.map(lambda p: 2.0 * p, variables['params'])  # a sharper softmax
  # Running averages away from (0, 1), so that the normalization matters.
  stats = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape)),
                       variables['batch_stats'])
  return curvature.make_logits_fn(model, stats), params, inputs, labels


def _leaf_sums(flat, params):
  return jax.tree.map(jnp.sum, ravel_pytree(params)[1](flat))


def test_layers_engine_matches_dense_on_every_layer_layout(x64):
  """Per-example norms, Tr(F), per-leaf Tr(F) and diag F of the three estimators on
  `ConvZoo` with engine='layers' equal the dense float64 values (rtol 1e-10)."""
  logits_fn, params, inputs, labels = _zoo_problem()
  assert _layers.unsupported_reason(logits_fn, params, inputs) is None
  rng = jax.random.PRNGKey(5)

  @cases.cheap_jit
  def ours(params, inputs, labels, rng):
    kw = dict(rng=rng, labels=labels, engine='layers')
    out = {'norms': curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels,
                                                        engine='layers')}
    for e in curvature.FISHER_ESTIMATORS:
      out[f'trace_{e}'] = curvature.fisher_trace(logits_fn, params, inputs, estimator=e, **kw)
      out[f'leaves_{e}'] = curvature.fisher_trace(logits_fn, params, inputs, estimator=e,
                                                  per_leaf=True, **kw)
      out[f'diag_{e}'] = curvature.fisher_diagonal(logits_fn, params, inputs, estimator=e,
                                                   **kw)
    return out

  @cases.cheap_jit
  def brute(params, inputs, labels, rng):
    fisher = dense.fisher(logits_fn, params, inputs)
    out = {'norms': dense.per_example_grad_sq_norms(logits_fn, params, inputs, labels),
           'trace_exact': jnp.trace(fisher), 'leaves_exact': dense.block_traces(fisher, params),
           'diag_exact': ravel_pytree(params)[1](jnp.diag(fisher))}
    y_hat = dense.sampled_labels(logits_fn, params, inputs, rng)
    for e, y in (('sampled', y_hat), ('empirical', labels)):
      squares = jnp.mean(dense.per_example_grads(logits_fn, params, inputs, y) ** 2, axis=0)
      out[f'trace_{e}'] = jnp.sum(squares)
      out[f'leaves_{e}'] = _leaf_sums(squares, params)
      out[f'diag_{e}'] = ravel_pytree(params)[1](squares)
    return out

  got, want = ours(params, inputs, labels, rng), brute(params, inputs, labels, rng)
  assert set(got) == set(want)
  for name in want:
    for g, w in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
      assert np.all(np.asarray(w) != 0), name  # every layer's gradient is exercised
      np.testing.assert_allclose(g, w, rtol=1e-10, err_msg=name)


class TiedMLP(nn.Module):
  """One dense layer applied twice: its gradient has two terms per example."""

  @nn.compact
  def __call__(self, x):
    layer = nn.Dense(x.shape[-1])
    return nn.Dense(3)(jnp.tanh(layer(jnp.tanh(layer(x)))))


class TimeMajorDense(nn.Module):
  """A dense layer on time-major [T, B, D] tokens: per-example, but its leading axis is T."""

  @nn.compact
  def __call__(self, x):  # [B, T, D]
    x = jnp.tanh(nn.Dense(2)(x.swapaxes(0, 1))).swapaxes(0, 1)
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


class LayerNormMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.LayerNorm()(nn.Dense(4)(x)))


class CircularConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.Conv(2, (3,), padding='CIRCULAR')(x).reshape((x.shape[0], -1)))


def _flax_problem(model, shape):
  inputs = jax.random.normal(jax.random.PRNGKey(0), (4,) + shape)
  params = model.init(jax.random.PRNGKey(1), inputs)['params']
  return (lambda p, x: model.apply({'params': p}, x)), params, inputs


@pytest.mark.parametrize('name,problem,reason', [
    ('batch statistics', lambda: _train_mode_problem(),
     'batch statistics (training mode)'),
    ('layer norm', lambda: _flax_problem(LayerNormMLP(), (5,)),
     'belong to no Dense, Conv or BatchNorm layer'),
    ('plain function', lambda: _plain_problem(), 'belong to no Dense, Conv or BatchNorm layer'),
    ('tied', lambda: _flax_problem(TiedMLP(), (5,)), 'shares a parameter'),
    ('time-major', lambda: _flax_problem(TimeMajorDense(), (3, 2)), 'leading axis'),
    ('circular padding', lambda: _flax_problem(CircularConv(), (6, 2)), "padding 'CIRCULAR'"),
    ('params changed', lambda: _changed_params(*_flax_problem(cases.UserMLP(), (5,))),
     'not leaves of params as given'),
])
def test_models_the_engine_does_not_cover_use_vmap_or_say_why(name, problem, reason):
  """'auto' falls back to the vmap engine (same numbers as engine='vmap'); engine='layers'
  raises a ValueError naming the reason and the fix."""
  logits_fn, params, inputs = problem()
  assert reason in _layers.unsupported_reason(logits_fn, params, inputs), name
  labels = jnp.arange(inputs.shape[0]) % 3
  norms = functools.partial(curvature.per_example_grad_sq_norms, logits_fn, params, inputs,
                            labels)
  np.testing.assert_array_equal(cases.cheap_jit(norms)(),
                                cases.cheap_jit(functools.partial(norms, engine='vmap'))())
  with pytest.raises(ValueError, match=f"engine='layers'.*{re.escape(reason)}.*engine='auto'"):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='exact', engine='layers')


def _train_mode_problem():
  model = cases.BatchNormCNN()
  inputs = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 2))
  variables = cases.cheap_jit(model.init)(jax.random.PRNGKey(1), inputs)

  def logits_fn(params, x):  # the statistics' update is thrown away
    return model.apply({**variables, 'params': params}, x, train=True,
                       mutable=['batch_stats'])[0]
  return logits_fn, variables['params'], inputs


def _plain_problem():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {'w1': jax.random.normal(keys[0], (5, 4)), 'b1': jnp.zeros(4),
            'w2': jax.random.normal(keys[1], (4, 3))}
  return cases.mlp_logits, params, jax.random.normal(keys[2], (4, 5))


def _changed_params(logits_fn, params, inputs):
  return (lambda p, x: logits_fn(jax.tree.map(lambda a: 1.0 * a, p), x)), params, inputs


def test_an_unknown_engine_is_named():
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp')
  with pytest.raises(ValueError, match=r"engine='fast'.*'auto', 'layers', 'vmap'"):
    curvature.fisher_diagonal(logits_fn, params, inputs, estimator='exact', engine='fast')


def test_the_gradient_of_a_layers_engine_trace_is_the_vmap_engines(x64):
  """∇θ Tr(F) (the Fisher penalty's gradient) through the layers engine equals the vmap
  engine's, for the sampled and exact estimators on `ConvZoo` (rtol 1e-9)."""
  logits_fn, params, inputs, _ = _zoo_problem(batch=4)
  rng = jax.random.PRNGKey(2)

  @cases.cheap_jit
  def grads(params, inputs, rng):
    out = {}
    for engine in ('layers', 'vmap'):
      for e in ('sampled', 'exact'):
        out[engine, e] = ravel_pytree(jax.grad(lambda p: curvature.fisher_trace(
            logits_fn, p, inputs, estimator=e, rng=rng, engine=engine))(params))[0]
    return out
  out = grads(params, inputs, rng)
  for e in ('sampled', 'exact'):
    assert np.linalg.norm(out['vmap', e]) > 1e-3
    np.testing.assert_allclose(out['layers', e], out['vmap', e], rtol=1e-9,
                               atol=1e-12 * np.abs(out['vmap', e]).max(), err_msg=e)


@pytest.mark.parametrize('name', models.available_models())
def test_every_model_of_the_zoo_is_covered(name):
  """Each registered model, through `make_logits_fn` with its running averages, runs its
  per-example pass on the layers engine (shapes only: `unsupported_reason` traces, compiles
  nothing); the numbers of such models are tested above."""
  model = models.get_model(name, num_classes=10)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  reasons = []

  def check(params, batch_stats):
    logits_fn = curvature.make_logits_fn(model, batch_stats)
    reasons.append(_layers.unsupported_reason(logits_fn, params, jax.ShapeDtypeStruct(
        (4, 32, 32, 3), jnp.float32)))
  jax.eval_shape(check, variables['params'], variables.get('batch_stats'))
  assert reasons == [None]
