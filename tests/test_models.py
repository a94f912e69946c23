"""The model zoo: published parameter counts, a training step and an evaluation of every
registered model, exact Tr(F) of its eval-mode logits against per-example brute force, BatchNorm
semantics (no leakage between examples in evaluation, running averages updated in training,
per-device statistics under shard_map), bfloat16 computation, and config errors.

XLA compile time dominates on CPU, so every model case is a single jitted function (one
compile), parameters are drawn with numpy instead of a compiled `model.init` (whose random
initializers take longer to compile than the model), and the jitted functions use XLA's cheapest
CPU compilation.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

import cases
from fisher_jax import curvature
from fisher_jax import models

NUM_CLASSES = 3


def _init_shapes(model, image_shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image_shape),
                                           train=False))


def _num_params(variables):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables['params']))


def _random_variables(model, image_shape, seed, dtype):
  """Variables shaped as `model.init` makes them, drawn with numpy (no compile).

  Kernels are He-normal, biases and BatchNorm offsets/scales are perturbed from 0/1, running
  means/variances are random, so train and eval modes compute visibly different functions.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(size=leaf.shape) * math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
    if name in ('bias', 'mean'):
      return 0.1 * rng.normal(size=leaf.shape)
    if name in ('scale', 'var'):
      return rng.uniform(0.8, 1.2, size=leaf.shape)
    raise AssertionError(f'unexpected variable {path}')

  drawn = jax.tree_util.tree_map_with_path(draw, _init_shapes(model, image_shape))
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), drawn)


# ----------------------------------------------------------------------------------------------
# Parameter counts.

# (name, kwargs, num_classes, image side, count, published, has BatchNorm). Counts are those of
# the reference implementations (torchvision for the ImageNet ResNets and DenseNet-121; the
# authors' code for WRN and DenseNet-BC; the widely used pytorch-cifar code for the CIFAR-stem
# ResNets and VGG-11). Published: the papers' figure and its rounding unit.
COUNT_CASES = [
    ('resnet18', {}, 1000, 224, 11_689_512, (11.69e6, 0.01e6), True),
    ('resnet50', {}, 1000, 224, 25_557_032, (25.56e6, 0.01e6), True),
    ('wide_resnet', {'depth': 28, 'widen_factor': 10}, 10, 32, 36_479_194, (36.5e6, 0.1e6), True),
    ('densenet', {'depth': 100, 'growth_rate': 12}, 10, 32, 769_162, (0.8e6, 0.1e6), True),
    ('densenet121', {}, 1000, 224, 7_978_856, (7.98e6, 0.01e6), True),
    ('wide_resnet', {'depth': 16, 'widen_factor': 4}, 10, 32, 2_748_890, (2.7e6, 0.1e6), True),
    ('resnet18', {'stem': 'cifar'}, 10, 32, 11_173_962, None, True),
    ('resnet50', {'stem': 'cifar'}, 10, 32, 23_520_842, None, True),
    ('vgg11', {'batch_norm': True}, 10, 32, 9_231_114, None, True),
    ('vgg11', {'batch_norm': False}, 10, 32, 9_225_610, None, False),
    ('simple_cnn', {}, 10, 32, 591_274, None, False),
]


@pytest.mark.parametrize('name, kwargs, num_classes, side, count, published, has_bn',
                         COUNT_CASES, ids=[f'{c[0]}-{c[4]}' for c in COUNT_CASES])
def test_parameter_count(name, kwargs, num_classes, side, count, published, has_bn):
  variables = _init_shapes(models.get_model(name, num_classes, **kwargs), (1, side, side, 3))
  assert _num_params(variables) == count
  if published is not None:
    value, unit = published  # The count rounds to the published figure.
    assert abs(count - value) <= unit / 2, (count, value)
  # BatchNorm models keep running averages; the others carry no batch_stats at all.
  assert ('batch_stats' in variables) == has_bn


@pytest.mark.parametrize('name, kwargs, count, has_bn', [
    ('mlp', {}, 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10, False),
    ('mlp', {'depth': 3, 'width': 64, 'batch_norm': True},
     784 * 64 + 2 * 64 * 64 + 3 * 2 * 64 + 64 * 10 + 10, True),  # BN: scale+bias, no Dense bias
    ('mlp', {'depth': 0}, 784 * 10 + 10, False),
    ('lenet5', {}, 61_706, False),
])
def test_fashion_mnist_model_parameter_counts(name, kwargs, count, has_bn):
  variables = _init_shapes(models.get_model(name, 10, **kwargs), (1, 28, 28, 1))
  assert _num_params(variables) == count
  assert ('batch_stats' in variables) == has_bn


# ----------------------------------------------------------------------------------------------
# One training step, one evaluation and the exact Fisher trace of every registered model.

# (registry name, registry kwargs, field overrides, image side). Every registered name appears.
# Compile time dominates on CPU: 1-5 s per gradient graph even for small nets, 10-25 s for the
# full ResNet-50 and DenseNet-121. So each registered model runs here with its depth and width
# fields overridden (`Module.clone`) to one block per stage and two to four stages: the stems,
# blocks (identity and projection shortcuts, strided convs), transitions, BatchNorm, dropout,
# pooling and heads are the registered model's own code and configuration. The parameter-count
# test covers the full sizes.
STEP_CASES = [
    ('simple_cnn', {}, {'widths': (4,), 'hidden': 8}, 8),
    ('vgg11', {'batch_norm': True}, {'layer_spec': (4, 'M', 8, 'M')}, 8),
    ('resnet18', {'width': 4}, {'stage_sizes': (1, 1)}, 16),  # ImageNet stem.
    ('resnet50', {'stem': 'cifar', 'width': 4}, {'stage_sizes': (1, 1)}, 8),
    ('wide_resnet', {'depth': 10, 'widen_factor': 1, 'dropout_rate': 0.3}, {}, 8),
    ('densenet', {'depth': 10, 'growth_rate': 4}, {'block_sizes': (1, 1)}, 8),
    ('densenet121', {}, {'block_sizes': (1, 1), 'growth_rate': 4, 'init_features': 8}, 16),
    ('mlp', {'depth': 2, 'width': 8, 'batch_norm': True, 'activation': 'tanh'}, {}, 4),
    ('lenet5', {}, {}, 12),
]
_NO_BATCH_NORM = ('simple_cnn', 'lenet5')


def test_step_cases_cover_the_registry():
  assert sorted(name for name, _, _, _ in STEP_CASES) == models.available_models()


def _make_step_checks(model, learning_rate):
  """One jitted function computing everything the step test checks, in one compile."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(learning_rate))

  def train_loss(params, batch_stats, images, labels, rng):
    """Mean CE in train mode, with the train-mode logits and updated running averages."""
    if batch_stats:
      logits, updated = model.apply(cases.flax_variables(params, batch_stats), images, train=True,
                                    mutable=['batch_stats'], rngs={'dropout': rng})
      new_stats = updated['batch_stats']
    else:
      logits = model.apply(cases.flax_variables(params, batch_stats), images, train=True,
                           rngs={'dropout': rng})
      new_stats = batch_stats
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, new_stats)

  def brute_force_exact_fisher_trace(variables, images):
    """(1/B) Σ_i Σ_c p(c|x_i) ‖∇θ CE(x_i, c)‖², jax.grad on one example [1, H, W, C] at a time
    (vmapped over the examples and the classes)."""

    def ce_and_probs(params, image, label):
      logits = model.apply({**variables, 'params': params}, image[None], train=False)[0]
      log_probs = jax.nn.log_softmax(logits)
      return -log_probs[label], jnp.exp(log_probs[label])

    def weighted_sq_norm(image, label):
      grads, prob = jax.grad(ce_and_probs, has_aux=True)(variables['params'], image, label)
      return prob * sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    classes = jnp.arange(NUM_CLASSES)
    per_class = jax.vmap(lambda x: jax.vmap(lambda c: weighted_sq_norm(x, c))(classes))(images)
    return jnp.mean(jnp.sum(per_class, axis=1))

  @cases.cheap_jit
  def checks(params, batch_stats, images, others, labels, rng):
    (loss, (train_logits, new_stats)), grads = jax.value_and_grad(train_loss, has_aux=True)(
        params, batch_stats, images, labels, rng)
    updates, _ = tx.update(grads, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)
    # Two more train-mode passes, vmapped (one trace): the loss after the step on the same
    # batch and dropout mask, and the logits before the step with example 0 among `others`.
    stacked_params = jax.tree.map(lambda a, b: jnp.stack([a, b]), new_params, params)
    losses_, (logits_, _) = jax.vmap(train_loss, in_axes=(0, None, 0, None, None))(
        stacked_params, batch_stats, jnp.stack([images, others]), labels, rng)
    variables = cases.flax_variables(new_params, new_stats)
    # Eval mode on two separate batches (vmap: one trace), both holding example 0.
    eval_logits = jax.vmap(lambda x: model.apply(variables, x, train=False))(
        jnp.stack([images, others]))
    logits_fn = curvature.make_logits_fn(model, new_stats or None)
    return {
        'loss': loss,
        'loss_after': losses_[0],
        'train_logits': train_logits,
        'train_logits_others': logits_[1],
        'batch_stats': new_stats,
        'eval_logits': eval_logits[0],
        'eval_logits_others': eval_logits[1],
        'fisher_trace': curvature.fisher_trace(logits_fn, new_params, images[:2],
                                               estimator='exact'),
        'brute_force': brute_force_exact_fisher_trace(variables, images[:2]),
    }

  return checks


@pytest.mark.parametrize('name, kwargs, overrides, side', STEP_CASES,
                         ids=[case[0] for case in STEP_CASES])
def test_train_step_evaluation_and_exact_fisher_trace(name, kwargs, overrides, side, x64):
  """One SGD step lowers the train loss and updates the running averages; eval-mode logits of
  an example do not depend on the rest of the batch (train-mode ones do); Tr(F) of the eval-mode
  logits equals the per-example brute force (float64)."""
  model = models.get_model(name, NUM_CLASSES, dtype='float64', **kwargs).clone(**overrides)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, side, side, 3))
  others = np.concatenate([images[:1], rng.normal(size=(3, side, side, 3))])  # Same example 0.
  labels = np.array([0, 1, 2, 1])
  variables = _random_variables(model, images.shape, seed=1, dtype=jnp.float64)
  has_bn = name not in _NO_BATCH_NORM
  assert ('batch_stats' in variables) == has_bn
  batch_stats = variables.get('batch_stats', {})

  out = _make_step_checks(model, learning_rate=1e-3)(
      variables['params'], batch_stats, images, others, labels,
      jax.random.key(2, impl='rbg'))  # Dropout bits: rbg compiles much faster than threefry.

  assert out['loss_after'] < out['loss'] - 1e-6, (out['loss'], out['loss_after'])
  assert out['eval_logits'].shape == (4, NUM_CLASSES)
  assert out['eval_logits'].dtype == jnp.float64
  np.testing.assert_allclose(out['eval_logits_others'][0], out['eval_logits'][0], rtol=1e-12)
  if has_bn:
    for old, new in zip(jax.tree.leaves(batch_stats), jax.tree.leaves(out['batch_stats'])):
      assert not np.allclose(old, new)
    # Train mode normalizes with batch statistics: example 0's logits move with the others (so
    # the eval-mode equality above is a real check), and differ from eval mode.
    assert not np.allclose(out['train_logits_others'][0], out['train_logits'][0], rtol=1e-6)
    assert not np.allclose(out['eval_logits'], out['train_logits'], rtol=1e-3)
  np.testing.assert_allclose(out['fisher_trace'], out['brute_force'], rtol=1e-10)
  assert out['fisher_trace'] > 0


# ----------------------------------------------------------------------------------------------
# BatchNorm semantics.

def _tiny_batch_norm_model(dtype='float32'):
  """VGG-11-BN's code with one conv: conv-BN-ReLU, global pool, linear."""
  return models.get_model('vgg11', NUM_CLASSES, batch_norm=True, dtype=dtype).clone(
      layer_spec=(4,))


def test_train_mode_updates_running_averages_with_momentum():
  """New running mean/var = 0.9 old + 0.1 batch mean/(biased) variance of the BN input."""
  model = _tiny_batch_norm_model()
  images = np.random.default_rng(0).normal(1.0, 2.0, size=(6, 5, 5, 3))
  variables = _random_variables(model, images.shape, seed=1, dtype=jnp.float32)

  @cases.cheap_jit
  def train_mode(variables, images):
    return model.apply(variables, images, train=True, mutable=['batch_stats', 'intermediates'],
                       capture_intermediates=lambda module, _: module.name == 'Conv_0')[1]

  updated = train_mode(variables, images)
  bn_input = np.asarray(updated['intermediates']['Conv_0']['__call__'][0], np.float64)
  old, new = variables['batch_stats']['BatchNorm_0'], updated['batch_stats']['BatchNorm_0']
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * bn_input.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * bn_input.var((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_data_parallel_batch_norm_statistics_are_per_device():
  """Under shard_map (the training step's mapping), BatchNorm normalizes each device's shard
  with that shard's statistics, as pmap did; `lax.pmean` over 'data' of the updated running
  averages equals the mean of the per-shard updates."""
  devices = np.array(jax.devices())
  n = len(devices)
  assert n >= 2  # tests/conftest.py fakes 8 CPU devices.
  mesh = Mesh(devices, ('data',))
  model = _tiny_batch_norm_model()
  rng = np.random.default_rng(0)
  # Shards with different means, so per-shard and global statistics differ.
  images = rng.normal(size=(2 * n, 5, 5, 3)) + np.repeat(np.arange(n), 2)[:, None, None, None]
  images = images.astype(np.float32)
  variables = _random_variables(model, images.shape, seed=1, dtype=jnp.float32)

  def train_mode(variables, x):
    logits, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return logits, updated['batch_stats']

  def device_step(variables, x):
    logits, batch_stats = train_mode(variables, x)
    return logits, lax.pmean(batch_stats, 'data')

  logits, batch_stats = cases.cheap_jit(jax.shard_map(
      device_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=(P('data'), P())))(
          variables, images)
  single = cases.cheap_jit(train_mode)
  per_shard = [single(variables, images[2 * k:2 * k + 2]) for k in range(n)]
  np.testing.assert_allclose(logits, np.concatenate([lg for lg, _ in per_shard]), rtol=1e-5,
                             atol=1e-6)
  expected = jax.tree.map(lambda *leaves: np.mean(leaves, axis=0), *[bs for _, bs in per_shard])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), batch_stats,
               expected)
  # Not the global-batch statistics (that would need BatchNorm(axis_name='data')).
  global_logits, _ = train_mode(variables, images)
  assert not np.allclose(logits, global_logits, rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# bfloat16 computation.

def _jaxpr_compute_dtypes(jaxpr):
  """Input dtypes of every conv and matmul in a jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
      found.extend(str(v.aval.dtype) for v in eqn.invars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          found.extend(_jaxpr_compute_dtypes(sub))
  return found


@pytest.mark.parametrize('name, kwargs, overrides, side', STEP_CASES,
                         ids=[case[0] for case in STEP_CASES])
def test_bfloat16_option_computes_in_bfloat16_with_float32_variables(name, kwargs, overrides,
                                                                     side):
  """dtype='bfloat16': every conv and matmul runs in bfloat16 (traced, no compile); parameters,
  running averages (also after a train-mode update) and logits stay float32."""
  model = models.get_model(name, NUM_CLASSES, dtype='bfloat16', **kwargs).clone(**overrides)
  images = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  variables = _init_shapes(model, images.shape)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype('float32')}

  def train_mode(variables, images):
    return model.apply(variables, images, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(0)})

  closed = jax.make_jaxpr(train_mode)(variables, images)
  assert set(_jaxpr_compute_dtypes(closed.jaxpr)) == {'bfloat16'}
  logits, updated = jax.eval_shape(train_mode, variables, images)
  assert logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree.leaves(updated)} <= {jnp.dtype('float32')}


def test_bfloat16_logits_are_close_to_float32_logits():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
  make = lambda dtype: models.get_model('resnet18', NUM_CLASSES, stem='cifar', width=8,
                                        dtype=dtype).clone(stage_sizes=(1, 1))
  variables = _random_variables(make('float32'), images.shape, seed=1, dtype=jnp.float32)

  @functools.partial(cases.cheap_jit, static_argnums=0)
  def evaluate(dtype, variables, images):
    return make(dtype).apply(variables, images, train=False)

  exact, low = evaluate('float32', variables, images), evaluate('bfloat16', variables, images)
  assert low.dtype == jnp.float32
  error = float(jnp.max(jnp.abs(low - exact)) / jnp.max(jnp.abs(exact)))
  assert 1e-5 < error < 5e-2, error  # bfloat16 rounding (8 mantissa bits), not float32.


# ----------------------------------------------------------------------------------------------
# Config errors.

@pytest.mark.parametrize('name, kwargs, field, choices', [
    ('resnet9000', {}, 'model.name', 'densenet121'),
    ('resnet18', {'depth': 18}, 'model.depth', "'stem'"),
    ('resnet18', {'stem': 'tiny'}, 'model.stem', "'cifar'"),
    ('resnet50', {'width': 0}, 'model.width', 'positive integer'),
    ('vgg11', {'batch_norm': 'yes'}, 'model.batch_norm', 'True or False'),
    ('wide_resnet', {'depth': 12}, 'model.depth', '6n + 4'),
    ('wide_resnet', {'widen_factor': 2.5}, 'model.widen_factor', 'positive integer'),
    ('wide_resnet', {'dropout_rate': 1.0}, 'model.dropout_rate', '[0, 1)'),
    ('wide_resnet', {'stem_stride': 4}, 'model.stem_stride', 'choose 1'),
    ('densenet', {'depth': 101}, 'model.depth', '6n + 4'),
    ('densenet', {'depth': 41, 'bottleneck': False}, 'model.depth', '3n + 4'),
    ('densenet', {'compression': 0.0}, 'model.compression', '(0, 1]'),
    ('densenet', {'growth_rate': 0}, 'model.growth_rate', 'positive integer'),
    ('densenet121', {'depth': 121}, 'model.depth', "'dropout_rate'"),
    ('simple_cnn', {'dtype': 'float8'}, 'model.dtype', "'bfloat16'"),
    ('mlp', {'depth': -1}, 'model.depth', 'non-negative integer'),
    ('mlp', {'width': 0}, 'model.width', 'positive integer'),
    ('mlp', {'activation': 'swish2'}, 'model.activation', "'relu'"),
    ('mlp', {'batch_norm': 1}, 'model.batch_norm', 'True or False'),
])
def test_invalid_model_config_is_one_sentence_naming_field_and_choices(name, kwargs, field,
                                                                      choices):
  with pytest.raises(ValueError) as error:
    models.get_model(name, 10, **kwargs)
  message = str(error.value)
  assert field in message and choices in message, message
  sentence = message.replace('e.g.', 'eg')
  assert sentence.endswith('.') and sentence.count('. ') == 0, message  # One sentence.


def test_a_registered_model_is_built_by_name_with_its_options_and_measured(monkeypatch):
  """register_model: get_model builds the new family by name with its options, rejects others,
  the layers engine covers it (Tr(F) equals the vmap engine's), and a taken name is refused."""
  class Linear(nn.Module):
    num_classes: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, train=False):
      del train
      return nn.Dense(self.num_classes, use_bias=self.use_bias)(x.reshape(len(x), -1))

  monkeypatch.setattr(models, '_REGISTRY', dict(models._REGISTRY))  # pylint: disable=protected-access
  models.register_model('linear', Linear)
  assert 'linear' in models.available_models()
  model = models.get_model('linear', 3, use_bias=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 2, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  assert jax.tree.map(jnp.shape, params) == {'Dense_0': {'kernel': (4, 3)}}
  logits_fn = curvature.make_logits_fn(model)
  traces = [curvature.fisher_trace(logits_fn, params, x, estimator='exact', engine=engine)
            for engine in ('layers', 'vmap')]
  np.testing.assert_allclose(traces[0], traces[1], rtol=1e-5)
  assert float(traces[0]) > 0
  with pytest.raises(ValueError, match=r"model.width is not an option of model 'linear'"):
    models.get_model('linear', 3, width=8)
  with pytest.raises(ValueError, match="'linear' is already registered"):
    models.register_model('linear', Linear)
  with pytest.raises(ValueError, match="'mlp' is already registered"):
    models.register_model('mlp', Linear)
