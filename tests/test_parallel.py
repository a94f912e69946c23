"""Data parallelism: 8 fake CPU devices give the same numbers as 1 for the same global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fisher_jax import models
from fisher_jax.training import cadence
from fisher_jax.training import mesh as mesh_lib
from fisher_jax.training import optim
from fisher_jax.training import settings
from fisher_jax.training import state as state_lib
from fisher_jax.training import steps


def _run_steps(config, mesh, batches, model):
  """Runs the train step on `batches`, the fresh-penalty steps decided on the host as the
  training loop does (two compiled steps, `cadence.penalty_due`)."""
  settings_ = settings.read(config)
  reg = settings_.regularizer
  tx = optim.make_optimizer(settings_.optimizer, reg, steps_per_epoch=10,
                            num_epochs=settings_.num_epochs)
  create = jax.jit(lambda r: state_lib.create_train_state(model, tx, (8, 8, 1), r),
                   out_shardings=mesh_lib.replicated(mesh))
  state = create(jax.random.PRNGKey(0))
  step_fns = {fresh: mesh_lib.data_parallel(
      steps.make_train_step(model, tx, reg.name, fresh_penalty=fresh), mesh,
      batch_args=(1,), num_args=2, donate_argnums=(0,)) for fresh in (True, False)}
  start = cadence.epochs_to_steps(reg.start_epoch, 10)
  losses, penalties = [], []
  for t, batch in enumerate(batches):
    fresh = cadence.penalty_due(t, every_k=reg.every_k, start_step=start)
    state, metrics = step_fns[fresh](state, mesh_lib.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
    penalties.append(float(metrics.get('penalty', 0.0)))
  return losses, penalties, jax.device_get(state)


def _batches(num, batch_size=32, seed=0):
  rng = np.random.RandomState(seed)
  return [{'image': rng.normal(size=(batch_size, 8, 8, 1)).astype(np.float32),
           'label': rng.randint(0, 10, size=batch_size).astype(np.int32)} for _ in range(num)]


@pytest.mark.parametrize('model_name, kwargs, regularizer, reference_devices', [
    ('simple_cnn', {}, 'none', 1),
    ('simple_cnn', {}, 'fp', 1),  # Penalty of the global batch, shared forward pass.
    # BatchNorm normalizes with each device's batch, so the reference also runs on 8 devices;
    # the penalty has its own forward pass (penalty_and_grad).
    pytest.param('wide_resnet', {'depth': 10, 'widen_factor': 1}, 'fp', 8,
                 marks=pytest.mark.slow),
])
def test_eight_devices_equal_one_device(default_config, model_name, kwargs, regularizer,
                                        reference_devices):
  """8 devices equal 1 device, the fresh-penalty steps decided on the host as the training loop
  does: every_k=2 from the second step (start_epoch 0.1 = 1 step)."""
  assert jax.device_count() == 8
  default_config.regularizer.name = regularizer
  default_config.regularizer.strength = 0.1
  default_config.regularizer.every_k = 2
  default_config.regularizer.start_epoch = 0.1
  model = models.get_model(model_name, 10, **kwargs)
  batches = _batches(4)
  losses_1, penalties_1, state_1 = _run_steps(
      default_config, mesh_lib.make_mesh(jax.devices()[:reference_devices]), batches, model)
  losses_8, penalties_8, state_8 = _run_steps(default_config, mesh_lib.make_mesh(), batches,
                                              model)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(penalties_8, penalties_1, rtol=1e-5, atol=1e-6)
  if regularizer != 'none':  # Zero before the start step, then recomputed at steps 1 and 3.
    assert penalties_1[0] == 0 and 0 < penalties_1[1] == penalties_1[2] != penalties_1[3]
  assert losses_1[-1] != losses_1[0]  # The parameters did move.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state_8.params, state_1.params)
  jax.tree.map(np.testing.assert_array_equal, state_8.step, state_1.step)


def test_eval_step_counts_padded_examples_once():
  mesh = mesh_lib.make_mesh()
  model = models.get_model('simple_cnn', 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                               opt_state=(), rng=jax.random.PRNGKey(1))
  eval_step = mesh_lib.data_parallel(steps.make_eval_step(model), mesh, batch_args=(1,),
                                     num_args=2)
  (batch,) = _batches(1, batch_size=16)
  real = 11
  batch['mask'] = (np.arange(16) < real).astype(np.float32)
  batch['image'][real:] = 1e3  # Padding content must not matter.
  sums = jax.device_get(eval_step(state, mesh_lib.shard_batch(batch, mesh)))
  logits = model.apply({'params': params}, batch['image'][:real])
  expected_correct = np.sum(np.argmax(logits, -1) == batch['label'][:real])
  assert sums['count'] == real
  assert sums['accuracy'] == expected_correct
  ce = -jax.nn.log_softmax(logits)[np.arange(real), batch['label'][:real]]
  np.testing.assert_allclose(sums['loss'], np.sum(ce), rtol=1e-5)


def test_batch_size_must_split_over_devices():
  with pytest.raises(ValueError, match='batch_size=100'):
    mesh_lib.check_divisible(100, mesh_lib.make_mesh())
