"""make_logits_fn: flax models with BatchNorm become per-example logits functions."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import cases
from fisher_jax import curvature
from fisher_jax.curvature import dense


def _trained_model():
  """Params and non-trivial running statistics (after two training-mode batches), float64."""
  model = cases.BatchNormCNN()
  inputs = 1.5 + jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 2), jnp.float64)
  variables = model.init(jax.random.PRNGKey(1), inputs[:1])
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
  params, batch_stats = variables['params'], variables['batch_stats']
  for _ in range(2):
    _, updates = model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=True,
                             mutable=['batch_stats'])
    batch_stats = updates['batch_stats']
  return model, params, batch_stats, inputs


def test_logits_fn_is_eval_mode_and_per_example_independent(x64):
  model, params, batch_stats, inputs = _trained_model()
  logits_fn = curvature.make_logits_fn(model, batch_stats)
  batch = logits_fn(params, inputs)
  alone = jnp.concatenate([logits_fn(params, inputs[i:i + 1]) for i in range(len(inputs))])
  np.testing.assert_allclose(batch, alone, rtol=1e-12)
  np.testing.assert_allclose(batch, model.apply({'params': params, 'batch_stats': batch_stats},
                                                inputs, train=False), rtol=1e-12)
  # Training mode would couple the examples through the batch statistics:
  train_logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, inputs,
                                train=True, mutable=['batch_stats'])
  train_alone, _ = model.apply({'params': params, 'batch_stats': batch_stats}, inputs[:2],
                               train=True, mutable=['batch_stats'])
  assert not np.allclose(train_logits[:2], train_alone, rtol=1e-3)


def test_fisher_trace_of_a_batchnorm_model_under_jit_matches_dense(x64):
  """The documented pattern: build logits_fn inside jit from the traced batch_stats."""
  model, params, batch_stats, inputs = _trained_model()

  @cases.cheap_jit
  def measure(params, batch_stats, inputs):
    logits_fn = curvature.make_logits_fn(model, batch_stats)
    return curvature.fisher_trace(logits_fn, params, inputs, estimator='exact', chunk_size=4)

  want = dense.fisher_trace(curvature.make_logits_fn(model, batch_stats), params, inputs,
                            estimator='exact')
  np.testing.assert_allclose(measure(params, batch_stats, inputs), want, rtol=1e-8)


def test_make_logits_fn_takes_any_flax_module_and_plain_apply_functions(x64):
  """Modules without `train`, with `deterministic` and another collection, `module.apply` and a
  plain apply function all give the model's eval-mode logits."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2), jnp.float64)
  user = cases.UserMLP()
  params = user.init(jax.random.PRNGKey(1), x)['params']
  want = user.apply({'params': params}, x)
  for model in (user, user.apply, lambda variables, inputs: user.apply(variables, inputs)):
    np.testing.assert_allclose(curvature.make_logits_fn(model)(params, x), want, rtol=1e-12)

  dropout = cases.DropoutMLP()
  variables = dropout.init(jax.random.PRNGKey(2), x, deterministic=True)
  constants = {'constants': variables['constants']}
  logits_fn = curvature.make_logits_fn(dropout, collections=constants)
  want = dropout.apply(variables, x, deterministic=True)
  np.testing.assert_allclose(logits_fn(variables['params'], x), want, rtol=1e-12)
  # The collection is used: another scale gives other logits.
  other = curvature.make_logits_fn(dropout, collections={'constants': {'scale': jnp.ones(4)}})
  assert not np.allclose(other(variables['params'], x), want)
  with pytest.raises(ValueError, match='flax Module'):
    curvature.make_logits_fn(3)


def _every_function(logits_fn, params, inputs, labels, rng, v):
  """Every curvature function on one batch (the user's MLP), as a dict of arrays/pytrees."""
  loss_fn = curvature.make_loss_fn(logits_fn, inputs, labels)
  hvp = curvature.make_hvp(loss_fn, params)
  fvp = curvature.make_fisher_vp(logits_fn, params, inputs)
  out = {f'fisher_trace_{e}': curvature.fisher_trace(logits_fn, params, inputs, estimator=e,
                                                     rng=rng, labels=labels)
         for e in curvature.FISHER_ESTIMATORS}
  out.update(
      norms=curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels),
      batch=curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng),
      grad_norm=curvature.gradient_norm(logits_fn, params, inputs, labels),
      fisher_vp=curvature.fisher_vp(logits_fn, params, inputs, v),
      hvp=curvature.hvp(loss_fn, params, v),
      hessian_trace=curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=3,
                                            per_leaf=True),
      hessian_diagonal=curvature.hessian_diagonal(loss_fn, params, rng=rng, num_probes=3),
      hessian_top=curvature.hessian_top_eigenvalue(loss_fn, params, rng=rng,
                                                   num_iterations=38),
      trace=curvature.trace_estimate(fvp, params, rng=rng, num_probes=6, method='hutch++'),
      fisher_diagonal=curvature.diagonal_estimate(fvp, params, rng=rng, num_probes=3),
      eigenpairs=curvature.top_eigenpairs(fvp, params, k=2, rng=rng, num_iterations=38),
      density=curvature.spectral_density(hvp, params, rng=rng, num_probes=2,
                                         num_iterations=5))
  return out


def _dense_references(apply, params, inputs, labels, rng, v):
  """The dense twins of `_every_function`'s deterministic entries."""
  loss_fn = curvature.make_loss_fn(apply, inputs, labels)
  return {
      'fisher_trace_exact': dense.fisher_trace(apply, params, inputs, estimator='exact'),
      'fisher_trace_sampled': dense.fisher_trace(apply, params, inputs, estimator='sampled',
                                                 rng=rng),
      'fisher_trace_empirical': dense.fisher_trace(apply, params, inputs,
                                                   estimator='empirical', labels=labels),
      'norms': dense.per_example_grad_sq_norms(apply, params, inputs, labels),
      'batch': dense.batch_fisher_trace(apply, params, inputs, rng=rng),
      'grad_norm': dense.gradient_norm(apply, params, inputs, labels),
      'fisher_vp': dense.fisher_vp(apply, params, inputs, v),
      'hvp': dense.hvp(loss_fn, params, v),
      'hessian_top': jnp.linalg.eigvalsh(dense.hessian(loss_fn, params))[-1],
      'eigenpairs': jnp.linalg.eigvalsh(dense.fisher(apply, params, inputs))[::-1][:2]}


def test_a_users_mlp_without_train_works_with_every_function(x64):
  """Acceptance 4: through make_logits_fn, a user's MLP without `train` runs every function
  under jit; the deterministic ones equal the dense references (rtol 1e-9) and the stochastic
  ones are consistent (per-leaf traces sum to the total, quadrature weights to 1)."""
  model = cases.UserMLP()
  inputs = jax.random.normal(jax.random.PRNGKey(0), (6, 2), jnp.float64)
  labels = jnp.array([0, 1, 2, 2, 1, 0])
  params = jax.tree.map(lambda p: 2.0 * p.astype(jnp.float64),
                        model.init(jax.random.PRNGKey(1), inputs)['params'])
  v = jax.tree.map(jnp.ones_like, params)
  rng = jax.random.PRNGKey(3)
  got = cases.cheap_jit(lambda *a: _every_function(curvature.make_logits_fn(model), *a))(
      params, inputs, labels, rng, v)
  apply = lambda p, x: model.apply({'params': p}, x)
  checks = cases.cheap_jit(lambda *a: _dense_references(apply, *a))(params, inputs, labels, rng,
                                                                   v)
  got['eigenpairs'] = got['eigenpairs'][0]
  for name, want in checks.items():
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(got[name])[0],
                               jax.flatten_util.ravel_pytree(want)[0], rtol=1e-9, err_msg=name)
  (leaves, _), (total, _) = got['hessian_trace'], curvature.hessian_trace(
      curvature.make_loss_fn(apply, inputs, labels), params, rng=rng, num_probes=3)
  np.testing.assert_allclose(sum(jax.tree.leaves(leaves)), total, rtol=1e-10)
  np.testing.assert_allclose(jnp.sum(got['density'][1], axis=1), 1.0, rtol=1e-10)
  for name in ('hessian_diagonal', 'fisher_diagonal', 'trace'):
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got[name])), name
