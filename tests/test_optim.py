"""The penalty transformation (under jit and shard_map) and make_optimizer/make_schedule."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

import cases
from fisher_jax import regularizers
from fisher_jax.training import optim
from fisher_jax.training import settings


def _quadratic_penalty(params):
  """P(w) = sum w^3 / 3 + sum w: a gradient w^2 + 1 that differs at every point."""
  return jnp.sum(params ** 3) / 3 + jnp.sum(params), params ** 2 + 1.0


def _run(tx, num_steps, penalty_fn=_quadratic_penalty, host_decides=None):
  """Runs `tx` under jit with gradients g_t and p_{t+1} = p_t - 0.1 * updates_t.

  `host_decides`: None (the transformation's lax.cond) or `count -> bool` passed as
  `recompute_penalty` (one compiled update per decision). Returns the per-step (params, grads,
  updates, state) as numpy values and the number of `penalty_fn` executions (counted by a host
  callback, which runs only when the computation that calls it runs).
  """
  calls = []

  def counted(p):
    jax.debug.callback(lambda: calls.append(1))
    return penalty_fn(p)

  updates_fns = {flag: cases.cheap_jit(lambda g, s, p, flag=flag: tx.update(
      g, s, p, penalty_fn=counted, recompute_penalty=flag)) for flag in (None, True, False)}
  params = jnp.linspace(-1.0, 1.0, 5)
  state = tx.init(params)
  history = []
  for t in range(num_steps):
    grads = jnp.cos(params + t)
    updates, new_state = updates_fns[None if host_decides is None else host_decides(t)](
        grads, state, params)
    history.append(jax.device_get((params, grads, updates, state)))
    params, state = params - 0.1 * updates, new_state
  jax.effects_barrier()
  return history, len(calls)


@pytest.mark.parametrize('host', [False, True], ids=['device_decides', 'host_decides'])
def test_penalty_is_zero_before_start_then_recomputed_every_k_and_reused_between(host):
  start, every_k, strength = 3, 4, 0.5
  due_fn = functools.partial(regularizers.recompute_due, every_k=every_k, start_step=start)
  history, calls = _run(regularizers.add_penalty_gradient(strength, every_k=every_k,
                                                   start_step=start), num_steps=13,
                        host_decides=(lambda t: bool(due_fn(t))) if host else None)
  cached = None
  for t, (params, grads, updates, state) in enumerate(history):
    due = t >= start and (t - start) % every_k == 0
    assert bool(state.recompute) == due and int(state.count) == t
    if due:
      cached = params ** 2 + 1.0  # The penalty gradient at this step's parameters.
    expected = grads if t < start else grads + strength * cached
    np.testing.assert_allclose(updates, expected, rtol=1e-6, err_msg=f'step {t}')
  assert calls == 3  # Steps 3, 7, 11 only: the other steps do not run penalty_fn.


def test_a_host_decision_against_the_schedule_poisons_the_update():
  tx = regularizers.add_penalty_gradient(0.5, every_k=2)
  history, _ = _run(tx, num_steps=3, host_decides=lambda t: t == 1)  # Due at 0 and 2, not 1.
  assert all(np.all(np.isnan(updates)) for (_, _, updates, _) in history)
  params = jnp.ones(3)
  with pytest.raises(ValueError, match='recompute_penalty'):
    tx.update(params, tx.init(params), params, penalty_fn=_quadratic_penalty,
              recompute_penalty=jnp.array(True))
  # Reusing the cache needs no penalty_fn.
  state = tx.update(params, tx.init(params), params, penalty_fn=_quadratic_penalty)[1]
  updates, _ = tx.update(params, state, params, recompute_penalty=False)
  np.testing.assert_allclose(updates, 1.0 + 0.5 * 2.0)


def test_state_caches_the_value_for_logging_and_penalty_due_reads_the_flag():
  tx = optax.chain(regularizers.add_penalty_gradient(1.0, every_k=2, start_step=1), optax.sgd(0.1))
  history, _ = _run(tx, num_steps=4)
  values = [float(regularizers.latest_penalty(s)) for (_, _, _, s) in history]
  due = [bool(regularizers.penalty_due(s)) for (_, _, _, s) in history]
  assert due == [False, True, False, True]
  params_1 = history[1][0]
  expected_1 = float(np.sum(params_1 ** 3) / 3 + np.sum(params_1))
  np.testing.assert_allclose(values, [0.0, 0.0, expected_1, expected_1], rtol=1e-6)
  assert float(regularizers.latest_penalty(optax.sgd(0.1).init(jnp.zeros(3)))) == 0.0
  assert not bool(regularizers.penalty_due(optax.sgd(0.1).init(jnp.zeros(3))))


def test_strength_may_be_a_schedule():
  schedule = optax.linear_schedule(0.0, 2.0, transition_steps=8)
  history, _ = _run(regularizers.add_penalty_gradient(schedule, every_k=3, start_step=2),
                    num_steps=9)
  cached = None
  for t, (params, grads, updates, _) in enumerate(history):
    if t >= 2 and (t - 2) % 3 == 0:
      cached = params ** 2 + 1.0
    expected = grads if t < 2 else grads + float(schedule(t)) * cached
    np.testing.assert_allclose(updates, expected, rtol=1e-6, err_msg=f'step {t}')


def test_chains_with_an_optax_optimizer_like_sgd_on_the_penalized_gradient():
  """chain(penalty, sgd with momentum) == sgd with momentum on grad + strength * grad P."""
  tx = optax.chain(regularizers.add_penalty_gradient(0.3), optax.sgd(0.05, momentum=0.9))
  history, _ = _run(tx, num_steps=4)
  reference = optax.sgd(0.05, momentum=0.9)
  ref_state = reference.init(history[0][0])
  for params, grads, updates, _ in history:
    ref_updates, ref_state = reference.update(grads + 0.3 * (params ** 2 + 1.0), ref_state)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-6)


def test_missing_extra_argument_or_params_is_an_explicit_error():
  tx = optax.chain(regularizers.add_penalty_gradient(0.1), optax.sgd(0.1))
  params = jnp.ones(3)
  state = tx.init(params)
  with pytest.raises(ValueError, match='penalty_fn'):
    jax.jit(lambda g, s, p: tx.update(g, s, p))(params, state, params)
  with pytest.raises(ValueError, match='parameters'):
    tx.update(params, state, None, penalty_fn=_quadratic_penalty)


@pytest.mark.parametrize('kwargs, match', [
    (dict(strength=-0.1), 'strength'),
    (dict(strength=0.1, every_k=0), 'every_k'),
    (dict(strength=0.1, start_step=-1), 'start_step'),
])
def test_invalid_transformation_arguments(kwargs, match):
  strength = kwargs.pop('strength')
  with pytest.raises(ValueError, match=match):
    regularizers.add_penalty_gradient(strength, **kwargs)


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


def _make_recompute_fn(config, steps_per_epoch):
  return optim.make_recompute_fn(settings.read_regularizer(config.regularizer), steps_per_epoch)


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
    updates, state = tx.update(grads, state, params, penalty_fn=None)  # 'none' ignores it.
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


def test_make_optimizer_adds_the_penalty_from_the_start_epoch():
  config = _config(**{'regularizer.name': 'fp', 'regularizer.strength': 0.5,
                      'regularizer.every_k': 2, 'regularizer.start_epoch': 1})
  history, calls = _run(_make_optimizer(config, steps_per_epoch=3), num_steps=6)
  for t, (params, grads, updates, _) in enumerate(history):
    if t == 3 or t == 5:
      cached = params ** 2 + 1.0
    expected = -0.1 * (grads + (0.5 * cached if t >= 3 else 0.0))
    np.testing.assert_allclose(updates, expected, rtol=1e-6, err_msg=f'step {t}')
  assert calls == 2
  due = _make_recompute_fn(config, steps_per_epoch=3)
  assert [due(t) for t in range(6)] == [bool(s.recompute) for (_, _, _, (s, _)) in history]
  assert [due(t) for t in range(6)] == [False, False, False, True, False, True]
  _, calls = _run(_make_optimizer(_config(), steps_per_epoch=3), num_steps=2)
  assert calls == 0  # 'none' never calls penalty_fn.
  assert not any(_make_recompute_fn(_config(), steps_per_epoch=3)(t) for t in range(6))


def test_training_step_on_eight_devices_equals_one_device(x64):
  """A data-parallel step (loss gradient pmean, fp penalty through the transformation, every_k=2)
  on 8 devices equals the same step on one device, over 3 steps; also the shared-forward
  variant (loss_and_penalty_grads) under lax.cond on penalty_due and decided on the host, under
  check_vma False and True."""
  np_rng = np.random.default_rng(0)
  inputs = jnp.asarray(np_rng.normal(size=(16, 4)))
  labels = jnp.asarray(np_rng.integers(0, 3, size=16), jnp.int32)
  params = {'w1': jnp.asarray(np_rng.normal(size=(4, 5))), 'b1': jnp.zeros(5),
            'w2': jnp.asarray(np_rng.normal(size=(5, 3)))}
  tx = optax.chain(regularizers.add_penalty_gradient(0.5, every_k=2), optax.sgd(0.1, momentum=0.9))
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))

  def loss_and_grads(params, inputs, labels, axis_name):
    loss_fn = lambda p: jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(  # noqa
        cases.mlp_logits(p, inputs), labels))
    if axis_name is None:
      return jax.value_and_grad(loss_fn)(params)
    return jax.lax.pmean(jax.value_and_grad(loss_fn)(params), axis_name)

  def step(params, opt_state, inputs, labels, rng, axis_name=None, shared=False,
           recompute=None):
    if recompute is not None:  # Decided on the host: no lax.cond.
      r = regularizers.loss_and_penalty_grads('fp' if recompute else 'none', cases.mlp_logits,
                                              params, inputs, labels, rng=rng,
                                              axis_name=axis_name)
      updates, opt_state = tx.update(r.loss_grads, opt_state, params,
                                     penalty_fn=lambda _: (r.penalty, r.penalty_grads),
                                     recompute_penalty=recompute)
      return optax.apply_updates(params, updates), opt_state, r.loss
    if shared:
      def with_penalty(p):
        r = regularizers.loss_and_penalty_grads('fp', cases.mlp_logits, p, inputs, labels, rng=rng,
                                                axis_name=axis_name)
        return (r.loss, r.loss_grads), (r.penalty, r.penalty_grads)

      def without_penalty(p):
        loss, grads = regularizers.loss_and_penalty_grads(
            'none', cases.mlp_logits, p, inputs, labels, axis_name=axis_name)[:2]
        return (loss, grads), (jnp.zeros([], loss.dtype), jax.tree.map(jnp.zeros_like, p))

      (loss, grads), penalty = jax.lax.cond(regularizers.penalty_due(opt_state), with_penalty,
                                            without_penalty, params)
      penalty_fn = lambda _: penalty  # noqa: E731
    else:
      loss, grads = loss_and_grads(params, inputs, labels, axis_name)
      penalty_fn = regularizers.make_penalty_fn('fp', cases.mlp_logits, inputs, labels, rng=rng,
                                                axis_name=axis_name)
    updates, opt_state = tx.update(grads, opt_state, params, penalty_fn=penalty_fn)
    return optax.apply_updates(params, updates), opt_state, loss

  def run(make_step_fn, host_decides=False):
    p, s, out = params, tx.init(params), []
    step_fns = {flag: make_step_fn(flag) for flag in ((True, False) if host_decides else (None,))}
    for t in range(3):
      flag = bool(regularizers.recompute_due(t, every_k=2, start_step=0)) if host_decides else None
      p, s, loss = step_fns[flag](p, s, inputs, labels, jax.random.key(t))
      out.append((p, s, loss))
    return out

  single = run(lambda flag: cases.cheap_jit(step))
  for shared, check_vma, host in ((False, False, False), (True, True, False), (True, False, True)):
    sharded = run(lambda flag: cases.cheap_jit(jax.shard_map(
        functools.partial(step, axis_name='data', shared=shared, recompute=flag), mesh=mesh,
        in_specs=(P(), P(), P('data'), P('data'), P()), out_specs=P(), check_vma=check_vma)),
        host_decides=host)
    for (a, b) in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
  assert float(regularizers.latest_penalty(single[-1][1])) > 0
