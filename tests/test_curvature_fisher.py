"""Fisher quantities and losses against dense float64 references (fisher_jax.curvature.dense)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cases
from fisher_jax import curvature, losses
from fisher_jax.curvature import dense

RTOL = 1e-8


def _all_quantities(logits_fn, params, inputs, labels, rng, chunk_size=None, engine='auto'):
  """Every Fisher quantity, as a dict name -> value (per-example norms summed)."""
  out = {est: curvature.fisher_trace(logits_fn, params, inputs, estimator=est, rng=rng,
                                     labels=labels, chunk_size=chunk_size, engine=engine)
         for est in curvature.FISHER_ESTIMATORS}
  out['batch'] = curvature.batch_fisher_trace(logits_fn, params, inputs, rng=rng)
  out['grad_norm'] = curvature.gradient_norm(logits_fn, params, inputs, labels)
  return out


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


@pytest.mark.parametrize('engine', ['layers', 'vmap'])
@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_every_fisher_quantity_matches_dense(x64, kind, engine):
  """Per-example norms, the three estimators ('sampled' against the dense value at the same
  sampled labels), Tr(F_B) and the gradient norm, against `dense` at rtol 1e-8, on both
  engines of the per-example pass."""
  logits_fn, params, inputs, labels = cases.fisher_problem(kind)
  rng = jax.random.PRNGKey(3)

  def everything(module, params, inputs, labels, rng):
    kw = {} if module is dense else dict(engine=engine)
    out = {est: module.fisher_trace(logits_fn, params, inputs, estimator=est, rng=rng,
                                    labels=labels, **kw) for est in curvature.FISHER_ESTIMATORS}
    out['norms'] = module.per_example_grad_sq_norms(logits_fn, params, inputs, labels, **kw)
    out['batch'] = module.batch_fisher_trace(logits_fn, params, inputs, rng=rng)
    out['grad_norm'] = module.gradient_norm(logits_fn, params, inputs, labels)
    return out
  got = jax.jit(functools.partial(everything, curvature))(params, inputs, labels, rng)
  want = jax.jit(functools.partial(everything, dense))(params, inputs, labels, rng)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=RTOL, err_msg=name)
  assert got['norms'].shape == (inputs.shape[0],)
  assert len({round(float(got[e]), 6) for e in curvature.FISHER_ESTIMATORS}) == 3
  # The gradient norm is the norm of the mean-loss gradient (not squared, not a mean of norms).
  mean_loss_grad = jax.grad(curvature.make_loss_fn(logits_fn, inputs, labels))(params)
  np.testing.assert_allclose(got['grad_norm'], np.sqrt(sum(
      np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(mean_loss_grad))), rtol=RTOL)


def test_sampled_labels_follow_the_contract_and_converge_to_exact(x64):
  """'sampled' equals 'empirical' at ŷ = jax.random.categorical(rng, logits) (and differs for
  another rng); the mean of 400 draws is within 4 standard errors of 'exact'."""
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp', batch=8)
  rng = jax.random.PRNGKey(11)

  @jax.jit
  def run(params, inputs, labels, rng):
    trace = functools.partial(curvature.fisher_trace, logits_fn, params, inputs)
    y_hat = jax.random.categorical(rng, logits_fn(params, inputs))
    draws = jax.vmap(lambda r: trace(estimator='sampled', rng=r))(jax.random.split(rng, 400))
    return dict(sampled=trace(estimator='sampled', rng=rng),
                at_y_hat=trace(estimator='empirical', labels=y_hat),
                other=trace(estimator='sampled', rng=jax.random.fold_in(rng, 1)),
                exact=trace(estimator='exact'), empirical=trace(estimator='empirical',
                                                                labels=labels), draws=draws)
  out = run(params, inputs, labels, rng)
  np.testing.assert_allclose(out['sampled'], out['at_y_hat'], rtol=1e-12)
  assert abs(float(out['other'] - out['sampled'])) > 1e-6 * float(out['sampled'])
  mean = float(jnp.mean(out['draws']))
  stderr = float(jnp.std(out['draws'])) / np.sqrt(400)
  exact = float(out['exact'])
  assert abs(mean - exact) < 4 * stderr
  assert stderr < 0.03 * exact  # tight enough to tell 'exact' from the empirical Fisher:
  assert abs(float(out['empirical']) - exact) > 8 * stderr


# ----------------------------------------------------------------------------- chunking


def test_chunk_size_does_not_change_results(x64):
  """B = 7 in chunks of 3 (the last one padded) gives the unchunked numbers."""
  logits_fn, params, inputs, labels = cases.fisher_problem('cnn', batch=7)
  rng = jax.random.PRNGKey(2)

  def everything(params, inputs, labels, rng, chunk_size):
    out = _all_quantities(logits_fn, params, inputs, labels, rng, chunk_size=chunk_size)
    out['norms'] = curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels,
                                                        chunk_size=chunk_size)
    return out
  fn = jax.jit(everything, static_argnames='chunk_size')
  whole = fn(params, inputs, labels, rng, chunk_size=None)
  chunked = fn(params, inputs, labels, rng, chunk_size=3)
  for name in whole:
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize('function,estimator', [(curvature.fisher_trace, 'sampled'),
                                                (curvature.fisher_trace, 'exact'),
                                                (curvature.fisher_diagonal, 'sampled')])
def test_chunked_peak_memory_does_not_grow_with_the_batch(function, estimator):
  """XLA's temp buffers for B = 64 and B = 256 (chunks of 16): on the vmap engine, unchunked,
  they grow by about the size of the extra per-example gradients (192 x P floats, C times that
  for 'exact'); chunked, by less than 1% of it (the diagonal too: its squared gradients are
  summed chunk by chunk). The layers engine never forms a dense layer's per-example gradients:
  unchunked, it grows by less than 10% of them (its layers' output gradients, C of them per
  example for 'exact')."""
  model = cases.WideMLP()
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))['params']
  logits_fn = lambda p, x: model.apply({'params': p}, x)
  num_params = sum(p.size for p in jax.tree.leaves(params))

  def temp_bytes(batch, chunk_size, engine='vmap'):
    fn = jax.jit(functools.partial(function, logits_fn, estimator=estimator,
                                   chunk_size=chunk_size, engine=engine))
    inputs = jax.ShapeDtypeStruct((batch, 16), jnp.float32)
    compiled = fn.lower(params, inputs, rng=jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  extra_grads_bytes = (256 - 64) * num_params * 4
  assert temp_bytes(256, None) - temp_bytes(64, None) > 0.5 * extra_grads_bytes
  assert temp_bytes(256, 16) - temp_bytes(64, 16) < 0.01 * extra_grads_bytes
  assert temp_bytes(256, None, 'layers') - temp_bytes(64, None, 'layers') < 0.1 * extra_grads_bytes


def test_map_in_chunks_keeps_example_order():
  xs = jnp.arange(10.0)
  for chunk_size in (1, 3, 4, 10):
    np.testing.assert_array_equal(curvature.map_in_chunks(lambda x: 2 * x, xs, chunk_size),
                                  2 * xs)


# ----------------------------------------------------------------------------- jit, sharding


@functools.lru_cache(maxsize=None)
def _sharding_problem():
  """The CNN problem and its one-device numbers, shared by the layouts."""
  logits_fn, params, inputs, labels = cases.fisher_problem('cnn', batch=24)
  rng = jax.random.PRNGKey(9)
  single = jax.jit(functools.partial(_all_quantities, logits_fn, chunk_size=2))(
      params, inputs, labels, rng)
  single['norms'] = curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels)
  return logits_fn, params, inputs, labels, rng, single


@pytest.mark.parametrize('layout,engine', [('jit_auto', 'auto'), ('jit_explicit', 'auto'),
                                           ('shard_map', 'auto'), ('jit_explicit', 'vmap')])
def test_sharded_batches_give_single_device_numbers(layout, engine):
  """8 devices give the one-device numbers (of the default engine, 'layers' for this CNN): under
  jit with the batch sharded over the mesh (XLA alone gets vmapped conv gradients of a sharded
  batch wrong) and inside shard_map; the vmap engine too (on the hardest layout)."""
  logits_fn, params, inputs, labels, rng, single = _sharding_problem()
  axis_type = (jax.sharding.AxisType.Explicit if layout == 'jit_explicit'
               else jax.sharding.AxisType.Auto)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
  batch_spec, rep_spec = jax.sharding.PartitionSpec('data'), jax.sharding.PartitionSpec()
  shard = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, batch_spec))
  args = (jax.device_put(params, jax.sharding.NamedSharding(mesh, rep_spec)), shard(inputs),
          shard(labels), rng)
  fn = functools.partial(_all_quantities, logits_fn, chunk_size=2, engine=engine)
  if layout == 'shard_map':
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(rep_spec, batch_spec, batch_spec, rep_spec),
                       out_specs=rep_spec)
  sharded = jax.jit(fn)(*args)
  for name in sharded:
    np.testing.assert_allclose(sharded[name], single[name], rtol=2e-5, err_msg=name)
  # Per-example rows come back in example order (inside shard_map: each device's own rows).
  norms = functools.partial(curvature.per_example_grad_sq_norms, logits_fn, engine=engine)
  if layout == 'shard_map':
    norms = jax.shard_map(norms, mesh=mesh, in_specs=(rep_spec, batch_spec, batch_spec),
                          out_specs=batch_spec)
  np.testing.assert_allclose(jax.jit(norms)(*args[:3]), single['norms'], rtol=2e-5)


@pytest.mark.parametrize('engine', ['layers', 'vmap'])
def test_a_batch_the_mesh_does_not_divide_is_padded_and_the_padding_never_counts(engine):
  """B = 13 on an 8-device mesh (the context mesh; the inputs replicated): the per-example work
  pads to 16 zero examples; the means (Tr(F), diag F) and the rows equal one device's, on
  both engines."""
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp', batch=13)
  rng = jax.random.PRNGKey(4)

  def quantities(params, inputs, labels, rng):
    kw = dict(engine=engine)
    return dict(trace=curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled',
                                             rng=rng, **kw),
                diag=curvature.fisher_diagonal(logits_fn, params, inputs, estimator='exact',
                                               **kw),
                norms=curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels,
                                                          **kw))
  single = jax.jit(quantities)(params, inputs, labels, rng)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    padded = jax.jit(quantities)(params, inputs, labels, rng)
  for name in single:
    for got, want in zip(jax.tree.leaves(padded[name]), jax.tree.leaves(single[name])):
      np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=name)


# ----------------------------------------------------------------------------- errors


def test_missing_or_unknown_arguments_raise_value_errors():
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp')
  with pytest.raises(ValueError, match='rng'):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='sampled')
  with pytest.raises(ValueError, match='labels'):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='empirical')
  with pytest.raises(ValueError, match="'sampled', 'exact', 'empirical'"):
    curvature.fisher_trace(logits_fn, params, inputs, estimator='kfac')
  with pytest.raises(ValueError, match='chunk_size'):
    curvature.per_example_grad_sq_norms(logits_fn, params, inputs, labels, chunk_size=0)
