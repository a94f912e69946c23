"""Regularizers against dense brute-force references in float64, and on 8 devices vs 1."""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np
import pytest

import cases
from fisher_jax import curvature
from fisher_jax import regularizers

NAMES = ('fp', 'fp_per_example', 'gp', 'gpr', 'gpx')
NUM_CLASSES = cases.TINY_CNN_CLASSES


def _dense_penalty(name, logits_fn, flat, unravel, inputs, labels, rng):
  """The penalty from full Jacobians: per-example grads J_i^T (p_i - e_y), input Jacobians."""
  logits = logits_fn(unravel(flat), inputs)
  if name in ('fp', 'fp_per_example'):
    labels = jax.random.categorical(rng, jax.lax.stop_gradient(logits))
  elif name == 'gpr':
    labels = jax.random.randint(rng, labels.shape, 0, NUM_CLASSES)
  residual = jax.nn.softmax(logits) - jax.nn.one_hot(labels, NUM_CLASSES)  # [B, C]
  if name == 'gpx':
    input_jac = jax.vmap(jax.jacrev(lambda x: logits_fn(unravel(flat), x[None])[0]))(inputs)
    input_grads = jnp.einsum('bc,bc...->b...', residual, input_jac)  # [B, H, W, C_in]
    return jnp.mean(jnp.sum(input_grads.reshape(len(inputs), -1) ** 2, axis=1))
  jac = jax.jacrev(lambda f: logits_fn(unravel(f), inputs))(flat)  # [B, C, P]
  per_example = jnp.einsum('bc,bcp->bp', residual, jac)  # [B, P]
  if name == 'fp_per_example':
    return jnp.mean(jnp.sum(per_example ** 2, axis=1))
  mean_grad = per_example.mean(0)
  return mean_grad @ mean_grad


@pytest.mark.parametrize('name', NAMES)
def test_penalty_and_grad_match_dense_reverse_over_reverse(x64, name):
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()
  rng = jax.random.key(7)
  flat, unravel = ravel_pytree(params)

  @cases.cheap_jit
  def compute(params, flat):
    value, grads = regularizers.penalty_and_grad(name, logits_fn, params, inputs, labels, rng=rng)
    dense_value, dense_grad = jax.value_and_grad(_dense_penalty, argnums=2)(
        name, logits_fn, flat, unravel, inputs, labels, rng)
    value_only, grad_of_value = jax.value_and_grad(
        lambda p: regularizers.penalty(name, logits_fn, p, inputs, labels, rng=rng))(params)
    return (value, ravel_pytree(grads)[0], dense_value, dense_grad, value_only,
            ravel_pytree(grad_of_value)[0])

  value, grads, dense_value, dense_grad, value_only, grad_of_value = compute(params, flat)
  assert dense_value > 1e-3 and np.linalg.norm(dense_grad) > 1e-3  # A non-trivial check.
  np.testing.assert_allclose(value, dense_value, rtol=1e-10)
  np.testing.assert_allclose(value_only, dense_value, rtol=1e-10)
  np.testing.assert_allclose(grads, dense_grad, rtol=1e-8, atol=1e-12 * np.abs(dense_grad).max())
  np.testing.assert_allclose(grad_of_value, dense_grad, rtol=1e-8,
                             atol=1e-12 * np.abs(dense_grad).max())


def test_sampled_labels_come_from_rng_and_are_constants(x64):
  """fp with two keys differs (labels are drawn); fp with the labels the key draws equals gp with
  those labels given as true labels, value and gradient (no gradient through the sampling)."""
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()

  @cases.cheap_jit
  def fp_and_gp(rng):
    sampled = jax.random.categorical(rng, logits_fn(params, inputs))
    return (regularizers.penalty_and_grad('fp', logits_fn, params, inputs, labels, rng=rng),
            regularizers.penalty_and_grad('gp', logits_fn, params, inputs, sampled))

  fp, gp = fp_and_gp(jax.random.key(3))
  for a, b in zip(jax.tree.leaves(fp), jax.tree.leaves(gp)):
    np.testing.assert_allclose(a, b, rtol=1e-12)
  values = {float(fp_and_gp(jax.random.key(k))[0][0]) for k in range(6)}
  assert len(values) > 1


def test_none_is_zero_and_missing_rng_or_unknown_name_is_an_error(x64):
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()
  value, grads = regularizers.penalty_and_grad('none', logits_fn, params, inputs, labels)
  assert float(value) == 0 and all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match='rng='):
    regularizers.penalty('fp', logits_fn, params, inputs, labels)
  with pytest.raises(ValueError, match='regularizer.name'):
    regularizers.penalty_and_grad('fisher', logits_fn, params, inputs, labels, rng=None)
  with pytest.raises(ValueError, match='floating-point'):
    regularizers.penalty('gpx', lambda p, x: logits_fn(p, x.astype(jnp.float64)), params,
                         (inputs * 10).astype(jnp.int32), labels)


def test_loss_and_penalty_grads_share_the_forward_pass_and_agree(x64):
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()
  rng = jax.random.key(11)
  loss_fn = lambda p: jnp.mean(-jnp.take_along_axis(  # noqa: E731
      jax.nn.log_softmax(logits_fn(p, inputs)), labels[:, None], axis=1))

  @cases.cheap_jit
  def both():
    reference = jax.value_and_grad(loss_fn)(params), logits_fn(params, inputs)
    shared = [regularizers.loss_and_penalty_grads(n, logits_fn, params, inputs, labels, rng=rng)
              for n in ('none',) + NAMES]
    separate = [regularizers.penalty_and_grad(n, logits_fn, params, inputs, labels, rng=rng)
                for n in NAMES]
    return reference, shared, separate

  ((loss, loss_grads), logits), shared, separate = both()
  for (result_loss, result_loss_grads, result_logits), _ in shared:
    np.testing.assert_allclose(result_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(ravel_pytree(result_loss_grads)[0], ravel_pytree(loss_grads)[0],
                               rtol=1e-10)
    np.testing.assert_allclose(result_logits, logits, rtol=1e-12)
  for (_, (penalty, penalty_grads)), (value, grads) in zip(shared[1:], separate):
    np.testing.assert_allclose(penalty, value, rtol=1e-12)
    np.testing.assert_allclose(ravel_pytree(penalty_grads)[0], ravel_pytree(grads)[0],
                               rtol=1e-10)


def test_eight_devices_equal_one_device_with_the_same_global_batch(x64):
  """Every penalty (acceptance: fp) under shard_map over 8 devices, 2 examples each, equals the
  one-device value and gradient of the 16-example batch; fp also with check_vma=False."""
  assert jax.device_count() >= 8, 'tests/conftest.py sets 8 fake CPU devices'
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()
  rng = jax.random.key(5)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))

  # 'gp' is fp's code path without the sampling; it is left out to keep the test short.
  sharded_names = ('fp', 'fp_per_example', 'gpr', 'gpx')

  def all_penalties(params, inputs, labels, rng, axis_name=None, names=sharded_names):
    out = {n: regularizers.penalty_and_grad(n, logits_fn, params, inputs, labels, rng=rng,
                                            axis_name=axis_name) for n in names}
    out['fp/value_only'] = regularizers.penalty('fp', logits_fn, params, inputs, labels, rng=rng,
                                                axis_name=axis_name)
    if len(names) == 1:
      return out
    shared = regularizers.loss_and_penalty_grads('gpr', logits_fn, params, inputs, labels,
                                                 rng=rng, axis_name=axis_name)
    (loss, loss_grads, _), (penalty, penalty_grads) = shared
    out['gpr/shared'] = (loss, loss_grads, penalty, penalty_grads)
    return out

  single = cases.cheap_jit(all_penalties)(params, inputs, labels, rng)
  for check_vma, names in ((True, sharded_names), (False, ('fp',))):
    sharded = cases.cheap_jit(jax.shard_map(
        lambda *args: all_penalties(*args, axis_name='data', names=names), mesh=mesh,
        in_specs=(P(), P('data'), P('data'), P()), out_specs=P(), check_vma=check_vma))(
            params, inputs, labels, rng)
    for key in sharded:
      for a, b in zip(jax.tree.leaves(sharded[key]), jax.tree.leaves(single[key])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14, err_msg=key)


def test_penalty_values_are_the_curvature_functions_values_on_one_and_eight_devices(x64):
  """penalty('fp') is batch_fisher_trace and penalty('fp_per_example') is
  fisher_trace(estimator='sampled') for the same (params, inputs, rng): on one device, and
  inside shard_map over 8 devices (2 examples each), where both equal the one-device values."""
  logits_fn, params, inputs, labels = cases.tiny_cnn_problem()
  rng = jax.random.key(13)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))

  def both(params, inputs, labels, rng, axis_name=None):
    return {
        'fp': regularizers.penalty('fp', logits_fn, params, inputs, labels, rng=rng,
                                   axis_name=axis_name),
        'fp/grad': regularizers.penalty_and_grad('fp', logits_fn, params, inputs, labels,
                                                 rng=rng, axis_name=axis_name)[0],
        'batch_fisher_trace': curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng),
        'fp_per_example': regularizers.penalty('fp_per_example', logits_fn, params, inputs,
                                               labels, rng=rng, axis_name=axis_name),
        'fp_per_example/grad': regularizers.penalty_and_grad(
            'fp_per_example', logits_fn, params, inputs, labels, rng=rng,
            axis_name=axis_name)[0],
        'fisher_trace': curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled',
                                               rng=rng),
    }

  single = cases.cheap_jit(both)(params, inputs, labels, rng)
  sharded = cases.cheap_jit(jax.shard_map(lambda *a: both(*a, axis_name='data'), mesh=mesh,
                               in_specs=(P(), P('data'), P('data'), P()), out_specs=P()))(
                                   params, inputs, labels, rng)
  assert float(single['fp']) > 1e-4 and float(single['fp_per_example']) > 1e-4
  for values in (single, sharded):
    for penalty, reference in (('fp', 'batch_fisher_trace'), ('fp_per_example', 'fisher_trace')):
      for key in (penalty, penalty + '/grad'):
        np.testing.assert_allclose(values[key], values[reference], rtol=1e-12, err_msg=key)
      np.testing.assert_allclose(values[reference], single[reference], rtol=1e-10)


@pytest.mark.slow
def test_fisher_penalty_keeps_the_early_fisher_trace_low_on_digits(default_config, tmp_path):
  """Small learning rate (0.003; the default is 0.03), 5 epochs of digits, seeded: the largest
  Tr(F) measured (step 0 and every epoch end) is lower with fp than without a penalty (the
  direction; how much lower is the study's result, not a property of the code), and the
  penalty is logged every epoch."""
  from fisher_jax.training import loop  # pylint: disable=g-import-not-at-top
  from fisher_jax.training import writers  # pylint: disable=g-import-not-at-top
  peaks, records = {}, {}
  for name, strength in (('none', 0.0), ('fp', 0.1)):
    config = default_config.copy_and_resolve_references()
    config.num_epochs = 5
    config.optimizer.learning_rate = 0.003
    config.measure.num_examples = 128
    config.eval_every_epochs = 0  # Evaluate and checkpoint once, at the end.
    config.checkpoint_every_epochs = 0
    config.regularizer.name = name
    config.regularizer.strength = strength
    loop.train_and_evaluate(config, str(tmp_path / name))
    records[name] = writers.read_metrics(str(tmp_path / name))
    peaks[name] = max(r['curvature/fisher_trace'] for r in records[name]
                      if 'curvature/fisher_trace' in r)
  assert peaks['fp'] < peaks['none'], peaks
  penalties = [r['regularizer/penalty'] for r in records['fp'] if 'regularizer/penalty' in r]
  assert len(penalties) == 5 and all(p > 0 for p in penalties)
