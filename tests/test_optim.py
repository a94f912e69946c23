"""The penalty transformation (under jit and shard_map), its cadence, make_optimizer/make_schedule."""

import functools
import itertools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

import cases
from fisher_jax import regularizers
from fisher_jax.training import cadence
from fisher_jax.training import optim
from fisher_jax.training import settings


def _quadratic_penalty(params):
  """P(w) = sum w^3 / 3 + sum w: a gradient w^2 + 1 that differs at every point."""
  return jnp.sum(params ** 3) / 3 + jnp.sum(params), params ** 2 + 1.0


def _run(tx, num_steps, fresh=lambda t: True):
  """Runs `tx` under jit with gradients g_t and p_{t+1} = p_t - 0.1 * updates_t.

  `fresh(t)` says whether update t hands over a fresh penalty (`_quadratic_penalty` at p_t) or
  nothing (the cached gradient is reused); each choice is one compiled update, as in the
  training loop. Returns the per-step (params, grads, updates, state) as numpy values.
  """
  updates_fns = {
      True: cases.cheap_jit(lambda g, s, p: tx.update(g, s, p, penalty=_quadratic_penalty(p))),
      False: cases.cheap_jit(lambda g, s, p: tx.update(g, s, p))}
  params = jnp.linspace(-1.0, 1.0, 5)
  state = tx.init(params)
  history = []
  for t in range(num_steps):
    grads = jnp.cos(params + t)
    updates, new_state = updates_fns[bool(fresh(t))](grads, state, params)
    history.append(jax.device_get((params, grads, updates, state)))
    params, state = params - 0.1 * updates, new_state
  return history


def test_update_under_jit_matches_a_hand_computed_tree_with_a_schedule_strength():
  """A pytree of two leaves, a sequence of fresh and reused penalties, strength a schedule:
  each update is grads + strength(t) * (the latest fresh penalty gradient, zeros before one)."""
  schedule = optax.linear_schedule(0.0, 2.0, transition_steps=8)
  tx = regularizers.add_penalty_gradient(schedule)
  update = jax.jit(tx.update)
  params = {'w': jnp.array([[0.5, -1.0], [2.0, 0.25]]), 'b': jnp.array([1.0, -3.0])}
  state = tx.init(params)
  cached = {'w': np.zeros((2, 2)), 'b': np.zeros(2)}
  value = 0.0
  for t, fresh in enumerate([False, True, False, False, True, True, False]):
    grads = jax.tree.map(lambda x: jnp.sin(x + t), params)
    penalty = None
    if fresh:
      value = float(t + 1)
      cached = {'w': np.full((2, 2), 0.5 * t), 'b': np.array([t, -t], np.float32)}
      penalty = (jnp.asarray(value), jax.tree.map(jnp.asarray, cached))
    updates, state = update(grads, state, params, penalty=penalty)
    strength = float(schedule(t))
    for leaf in ('w', 'b'):
      np.testing.assert_allclose(updates[leaf], np.asarray(grads[leaf]) + strength * cached[leaf],
                                 rtol=1e-6, err_msg=f'step {t}, leaf {leaf}')
    assert int(state.count) == t + 1
    assert float(regularizers.latest_penalty(state)) == value
    params = jax.tree.map(lambda p, u: p - 0.1 * u, params, updates)


@pytest.mark.parametrize('fresh_steps', list(itertools.product([False, True], repeat=5)))
def test_any_sequence_of_fresh_and_reused_penalties_gives_finite_updates(fresh_steps):
  """Whatever the caller decides at each step (nothing to disagree with inside the
  transformation), the update is grads + strength * the latest fresh penalty gradient."""
  history = _run(regularizers.add_penalty_gradient(0.5), num_steps=5,
                 fresh=lambda t: fresh_steps[t])
  cached = np.zeros(5)
  for t, (params, grads, updates, _) in enumerate(history):
    if fresh_steps[t]:
      cached = params ** 2 + 1.0
    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates, grads + 0.5 * cached, rtol=1e-6, atol=1e-6,
                               err_msg=f'step {t}')


def test_state_caches_the_value_for_logging():
  tx = optax.chain(regularizers.add_penalty_gradient(1.0), optax.sgd(0.1))
  history = _run(tx, num_steps=4, fresh=lambda t: t in (1, 3))
  values = [float(regularizers.latest_penalty(s)) for (_, _, _, s) in history]
  params_1 = history[1][0]
  expected_1 = float(np.sum(params_1 ** 3) / 3 + np.sum(params_1))
  np.testing.assert_allclose(values, [0.0, 0.0, expected_1, expected_1], rtol=1e-6)
  assert float(regularizers.latest_penalty(optax.sgd(0.1).init(jnp.zeros(3)))) == 0.0
  two = optax.chain(regularizers.add_penalty_gradient(1.0), regularizers.add_penalty_gradient(1.0))
  with pytest.raises(ValueError, match='2 add_penalty_gradient states'):
    regularizers.latest_penalty(two.init(jnp.zeros(3)))


def test_chains_with_an_optax_optimizer_like_sgd_on_the_penalized_gradient():
  """chain(penalty, sgd with momentum) == sgd with momentum on grad + strength * grad P."""
  tx = optax.chain(regularizers.add_penalty_gradient(0.3), optax.sgd(0.05, momentum=0.9))
  history = _run(tx, num_steps=4)
  reference = optax.sgd(0.05, momentum=0.9)
  ref_state = reference.init(history[0][0])
  for params, grads, updates, _ in history:
    ref_updates, ref_state = reference.update(grads + 0.3 * (params ** 2 + 1.0), ref_state)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-6)


def test_a_negative_strength_is_an_error():
  with pytest.raises(ValueError, match='strength'):
    regularizers.add_penalty_gradient(-0.1)


def test_penalty_due_is_every_k_from_the_start_step():
  assert [cadence.penalty_due(t, every_k=4, start_step=3) for t in range(13)] == [
      t >= 3 and (t - 3) % 4 == 0 for t in range(13)]
  assert all(cadence.penalty_due(t, every_k=1, start_step=0) for t in range(5))


def _config(**overrides):
  """A minimal config with the fields make_optimizer reads; overrides as 'a.b': value."""
  config = ml_collections.ConfigDict(dict(
      num_epochs=10,
      optimizer=dict(name='sgd', learning_rate=0.1, momentum=0.0, nesterov=False,
                     weight_decay=0.0, schedule='constant', warmup_epochs=0.0,
                     decay_epochs=(4, 8), decay_factor=0.1),
      regularizer=dict(name='none', strength=0.0, every_k=1, start_epoch=0)))
  for path, value in overrides.items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def _make_optimizer(config, steps_per_epoch):
  """make_optimizer from the validated settings of `config`, as the training loop builds it."""
  return optim.make_optimizer(settings.read_optimizer(config.optimizer),
                              settings.read_regularizer(config.regularizer),
                              steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs)


def _schedule(config, steps_per_epoch, num_epochs):
  return optim.make_schedule(settings.read_optimizer(config.optimizer), steps_per_epoch,
                             num_epochs)


@pytest.mark.parametrize('overrides, reference', [
    ({'optimizer.name': 'sgd'}, optax.sgd(0.1)),
    ({'optimizer.name': 'sgd', 'optimizer.momentum': 0.5}, optax.sgd(0.1, momentum=0.5)),
    ({'optimizer.name': 'momentum', 'optimizer.momentum': 0.9}, optax.sgd(0.1, momentum=0.9)),
    ({'optimizer.name': 'nesterov', 'optimizer.momentum': 0.9},
     optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ({'optimizer.name': 'momentum', 'optimizer.momentum': 0.9, 'optimizer.nesterov': True},
     optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ({'optimizer.name': 'adam'}, optax.adam(0.1)),
    ({'optimizer.name': 'adamw', 'optimizer.weight_decay': 0.01},
     optax.adamw(0.1, weight_decay=0.01)),
    ({'optimizer.name': 'momentum', 'optimizer.weight_decay': 5e-4},
     optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))),
])
def test_make_optimizer_matches_the_optax_optimizer(overrides, reference):
  config = _config(**overrides)
  if 'optimizer.momentum' not in overrides and overrides['optimizer.name'] == 'momentum':
    config.optimizer.momentum = 0.9  # configs/default.py's momentum.
  tx = _make_optimizer(config, steps_per_epoch=10)
  params = jnp.linspace(-1.0, 1.0, 4)
  state, ref_state = tx.init(params), reference.init(params)
  for t in range(3):
    grads = jnp.sin(params * (t + 1))
    updates, state = tx.update(grads, state, params, penalty=None)  # 'none' ignores it.
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-6)
    params = params + updates


def test_schedules_warmup_step_and_cosine():
  spe = 10
  constant = _schedule(_config(**{'optimizer.warmup_epochs': 2.0}), spe, 10)
  np.testing.assert_allclose([constant(s) for s in (0, 10, 20, 50)], [0.0, 0.05, 0.1, 0.1],
                             rtol=1e-6)
  # Decay epochs count from the start of training, warm-up included.
  step = _schedule(_config(**{'optimizer.schedule': 'step', 'optimizer.warmup_epochs': 1.0}),
                   spe, 10)
  np.testing.assert_allclose([step(s) for s in (5, 10, 39, 40, 79, 80)],
                             [0.05, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-5)
  twice = _schedule(_config(**{'optimizer.schedule': 'step', 'optimizer.decay_epochs': (3, 3)}),
                    spe, 10)
  np.testing.assert_allclose([twice(29), twice(30)], [0.1, 0.001], rtol=1e-5)
  cosine = _schedule(_config(**{'optimizer.schedule': 'cosine', 'optimizer.warmup_epochs': 2.0}),
                     spe, 10)
  np.testing.assert_allclose([cosine(s) for s in (0, 20, 60, 100)],
                             [0.0, 0.1, 0.05, 0.0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize('overrides, match', [
    ({'optimizer.name': 'lbfgs'}, r"optimizer.name='lbfgs' is unknown; choose one of"),
    ({'optimizer.learning_rate': -0.1}, 'optimizer.learning_rate=-0.1 is invalid'),
    ({'optimizer.momentum': 1.0}, 'optimizer.momentum=1.0 is invalid'),
    ({'optimizer.name': 'momentum', 'optimizer.momentum': 0.0}, 'optimizer.momentum=0'),
    ({'optimizer.nesterov': True}, 'optimizer.nesterov=True needs optimizer.momentum'),
    ({'optimizer.name': 'adam', 'optimizer.nesterov': True}, 'optimizer.nesterov=True is only'),
    ({'optimizer.weight_decay': -1e-4}, 'optimizer.weight_decay'),
    ({'optimizer.schedule': 'linear'}, r"optimizer.schedule='linear' is unknown"),
    ({'optimizer.warmup_epochs': -1.0}, 'optimizer.warmup_epochs'),
    ({'optimizer.schedule': 'step', 'optimizer.decay_epochs': ()}, 'optimizer.decay_epochs'),
    ({'optimizer.schedule': 'step', 'optimizer.decay_factor': 0.0}, 'optimizer.decay_factor'),
    ({'regularizer.name': 'fisher'}, r"regularizer.name='fisher' is unknown; choose one of"),
    ({'regularizer.name': 'fp', 'regularizer.strength': -1.0}, 'regularizer.strength'),
    ({'regularizer.name': 'fp', 'regularizer.every_k': 0}, 'regularizer.every_k=0 is invalid'),
    ({'regularizer.name': 'fp', 'regularizer.start_epoch': -1}, 'regularizer.start_epoch'),
])
def test_make_optimizer_rejects_invalid_config_fields(overrides, match):
  with pytest.raises(ValueError, match=match):
    _make_optimizer(_config(**overrides), steps_per_epoch=10)


def test_make_optimizer_adds_the_penalty_the_loop_hands_over_from_the_start_epoch():
  """make_optimizer's penalty with the loop's cadence (every_k=2 from epoch 1 = step 3): zero
  before, the fresh gradient at steps 3 and 5, the cached one at step 4."""
  config = _config(**{'regularizer.name': 'fp', 'regularizer.strength': 0.5,
                      'regularizer.every_k': 2, 'regularizer.start_epoch': 1})
  reg = settings.read_regularizer(config.regularizer)
  start = cadence.epochs_to_steps(reg.start_epoch, 3)
  fresh = lambda t: cadence.penalty_due(t, every_k=reg.every_k, start_step=start)  # noqa: E731
  assert [fresh(t) for t in range(6)] == [False, False, False, True, False, True]
  history = _run(_make_optimizer(config, steps_per_epoch=3), num_steps=6, fresh=fresh)
  for t, (params, grads, updates, _) in enumerate(history):
    if t == 3 or t == 5:
      cached = params ** 2 + 1.0
    expected = -0.1 * (grads + (0.5 * cached if t >= 3 else 0.0))
    np.testing.assert_allclose(updates, expected, rtol=1e-6, err_msg=f'step {t}')
  # 'none' ignores a penalty handed over.
  for _, grads, updates, _ in _run(_make_optimizer(_config(), steps_per_epoch=3), 2):
    np.testing.assert_allclose(updates, -0.1 * grads, rtol=1e-6)


def test_training_step_on_eight_devices_equals_one_device(x64):
  """A data-parallel step (loss gradient pmean, fp penalty through the transformation, fresh
  every 2 steps as the host decides) on 8 devices equals the same step on one device, over 3
  steps: the penalty with its own forward pass (penalty_and_grad) and sharing the loss's
  (loss_and_penalty_grads), under check_vma False and True."""
  np_rng = np.random.default_rng(0)
  inputs = jnp.asarray(np_rng.normal(size=(16, 4)))
  labels = jnp.asarray(np_rng.integers(0, 3, size=16), jnp.int32)
  params = {'w1': jnp.asarray(np_rng.normal(size=(4, 5))), 'b1': jnp.zeros(5),
            'w2': jnp.asarray(np_rng.normal(size=(5, 3)))}
  tx = optax.chain(regularizers.add_penalty_gradient(0.5), optax.sgd(0.1, momentum=0.9))
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))

  def loss_and_grads(params, inputs, labels, axis_name):
    loss_fn = lambda p: jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(  # noqa
        cases.mlp_logits(p, inputs), labels))
    if axis_name is None:
      return jax.value_and_grad(loss_fn)(params)
    return jax.lax.pmean(jax.value_and_grad(loss_fn)(params), axis_name)

  def step(params, opt_state, inputs, labels, rng, axis_name=None, shared=False, fresh=True):
    penalty = None
    if shared:  # 'none': the loss gradient alone, by the same code (device-varying params).
      (loss, grads, _), penalty = regularizers.loss_and_penalty_grads(
          'fp' if fresh else 'none', cases.mlp_logits, params, inputs, labels, rng=rng,
          axis_name=axis_name)
      penalty = penalty if fresh else None
    else:
      loss, grads = loss_and_grads(params, inputs, labels, axis_name)
      if fresh:
        penalty = regularizers.penalty_and_grad('fp', cases.mlp_logits, params, inputs, labels,
                                                rng=rng, axis_name=axis_name)
    updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
    return optax.apply_updates(params, updates), opt_state, loss

  def run(make_step_fn):
    p, s, out = params, tx.init(params), []
    step_fns = {fresh: make_step_fn(fresh) for fresh in (True, False)}
    for t in range(3):
      fresh = cadence.penalty_due(t, every_k=2, start_step=0)
      p, s, loss = step_fns[fresh](p, s, inputs, labels, jax.random.key(t))
      out.append((p, s, loss))
    return out

  single = run(lambda fresh: cases.cheap_jit(functools.partial(step, fresh=fresh)))
  for shared, check_vma in ((False, False), (True, True), (True, False)):
    sharded = run(lambda fresh: cases.cheap_jit(jax.shard_map(
        functools.partial(step, axis_name='data', shared=shared, fresh=fresh), mesh=mesh,
        in_specs=(P(), P(), P('data'), P('data'), P()), out_specs=P(), check_vma=check_vma)))
    for (a, b) in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
  assert float(regularizers.latest_penalty(single[-1][1])) > 0
