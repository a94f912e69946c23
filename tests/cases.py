"""Small models and problems shared by the tests (as kfac-jax's tests/models.py and curvlinops'
test/cases.py), and the one cheap-compile jit of the tests.

A problem is `(logits_fn, params, inputs [B, ...], labels [B])` with
`logits_fn(params, inputs) -> logits [B, C]`.
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The test programs are tiny: XLA's lowest CPU optimization level, without the expensive LLVM
# passes and the fusion emitters, compiles their gradient graphs several times faster (most of
# a test's time is compilation).
CHEAP_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True,
                 'xla_cpu_use_fusion_emitters': False}
cheap_jit = functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)

FISHER_CLASSES = 4  # Classes of `fisher_problem`'s models.
TINY_CNN_CLASSES = 3  # Classes of `tiny_cnn_problem`'s model.


def flax_variables(params, batch_stats):
  """{'params', 'batch_stats'?} for `model.apply`, as `TrainState.variables()` builds it."""
  return {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params}


class MLP(nn.Module):
  """flatten - dense(6) - tanh - dense(classes)."""
  num_classes: int = FISHER_CLASSES

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape((x.shape[0], -1))
    x = jnp.tanh(nn.Dense(6)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """conv(3) - relu - max-pool - conv(4) - tanh - dense(classes)."""
  num_classes: int = FISHER_CLASSES

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(3, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.tanh(nn.Conv(4, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


class WideMLP(nn.Module):
  """dense(256) - tanh - dense(256) - tanh - dense(classes): many parameters, for memory."""
  num_classes: int = FISHER_CLASSES

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = jnp.tanh(nn.Dense(256)(x))
    x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(self.num_classes)(x)


class TinyCNN(nn.Module):
  """conv-tanh-dense-tanh-dense in float64: smooth, so every Hessian term is non-zero."""
  num_classes: int = TINY_CNN_CLASSES

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    x = jnp.tanh(nn.Conv(3, (3, 3), **kw)(x))
    x = jnp.tanh(nn.Dense(6, **kw)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes, **kw)(x)


class BatchNormCNN(nn.Module):
  """conv(3) - BatchNorm - relu - dense(3), with a `train` argument (running statistics)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(3, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.Dense(3)(x)


class UserMLP(nn.Module):
  """A user's own model: dense(5) - tanh - dense(3), no `train` argument."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(jnp.tanh(nn.Dense(5)(x)))


class DropoutMLP(nn.Module):
  """flax's dropout convention: a `deterministic` argument, and a non-parameter collection."""

  @nn.compact
  def __call__(self, x, deterministic: bool = False):
    scale = self.variable('constants', 'scale', lambda: jnp.full((4,), 2.0, x.dtype))
    x = nn.Dropout(0.5)(jnp.tanh(nn.Dense(4)(x)) * scale.value, deterministic=deterministic)
    return nn.Dense(3)(x)


def fisher_problem(kind, batch=7, seed=0):
  """'mlp' (inputs [B, 5]) or 'cnn' (inputs [B, 6, 6, 2]) with 4 classes, in the current default
  float dtype, with doubled initial parameters (a sharper softmax)."""
  dtype = jnp.zeros(()).dtype if not jax.config.jax_enable_x64 else jnp.float64
  model, shape = {'mlp': (MLP(), (5,)), 'cnn': (CNN(), (6, 6, 2))}[kind]
  k_x, k_y, k_p = jax.random.split(jax.random.PRNGKey(seed), 3)
  inputs = jax.random.normal(k_x, (batch,) + shape, dtype)
  labels = jax.random.randint(k_y, (batch,), 0, FISHER_CLASSES)
  params = model.init(k_p, inputs[:1])['params']
  params = jax.tree.map(lambda p: (2.0 * p).astype(dtype), params)  # sharper softmax
  logits_fn = lambda p, x: model.apply({'params': p}, x)  # noqa: E731
  return logits_fn, params, inputs, labels


@functools.lru_cache(maxsize=None)
def tiny_cnn_problem(batch=16):
  """`TinyCNN` on inputs [B, 4, 4, 2], 3 classes, float64 (call under `jax.enable_x64`); built
  once (eager JAX ops compile one by one, which is slow on a busy CPU)."""
  model = TinyCNN()
  np_rng = np.random.default_rng(0)
  inputs = jnp.asarray(np_rng.normal(size=(batch, 4, 4, 2)), jnp.float64)
  labels = jnp.asarray(np_rng.integers(0, TINY_CNN_CLASSES, size=batch), jnp.int32)
  params = cheap_jit(model.init)(jax.random.key(2), inputs)['params']
  logits_fn = lambda p, x: model.apply({'params': p}, x)  # noqa: E731
  return logits_fn, params, inputs, labels


def mlp_logits(params, inputs):
  """A two-layer tanh MLP as a plain function: inputs [B, D] -> logits [B, C] for params
  {'w1' [D, H], 'b1' [H], 'w2' [H, C]}."""
  return jnp.tanh(inputs @ params['w1'] + params['b1']) @ params['w2']


# ----------------------------------------------------------------------------- run directories


def write_run(path, records, *, name='fisher_explosion', group='g', variant='small_lr', seed=0,
              lr=0.001, batch_size=128, num_epochs=None, early_epochs=2.0, regularizer='none',
              strength=0.0, start_epoch=0, every_k=10, label_noise=0.0, setting=None,
              eval_every_epochs=1, init_from=None):
  """Writes config.json and metrics.jsonl as fisher_jax does; returns the path. By default
  `num_epochs` is the last epoch of `records` (a finished run)."""
  os.makedirs(path, exist_ok=True)
  if num_epochs is None:
    num_epochs = max([r.get('epoch', 0) for r in records] + [0])
  config = {'seed': seed, 'batch_size': batch_size, 'num_epochs': num_epochs,
            'eval_every_epochs': eval_every_epochs, 'init_from': {'workdir': init_from},
            'dataset': {'name': 'd', 'label_noise': label_noise},
            'optimizer': {'learning_rate': lr},
            'regularizer': {'name': regularizer, 'strength': strength,
                            'start_epoch': start_epoch, 'every_k': every_k},
            'experiment': {'name': name, 'group': group, 'variant': variant,
                           'early_epochs': early_epochs, 'setting': setting or group.split('/')[0],
                           'tuned_lr': 0.0316}}
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')
  return str(path)


def epoch_records(fisher, test=None, train=None, hessian=None, val=None, steps_per_epoch=10,
                  train_loss=None):
  """Records at epochs 0..len(fisher)-1 (epoch 0 holds only the curvature, as step 0 does).
  Validation accuracy is the test accuracy unless `val` is given."""
  out = []
  val = test if val is None else val
  for e, value in enumerate(fisher):
    record = {'step': e * steps_per_epoch, 'epoch': float(e), 'curvature/fisher_trace': value}
    if e > 0:
      for key, values in (('test/accuracy', test), ('train/accuracy', train),
                          ('val/accuracy', val), ('train/loss', train_loss),
                          ('curvature/hessian_trace', hessian)):
        if values is not None:
          record[key] = values[e]
    out.append(record)
  return out
