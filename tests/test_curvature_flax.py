"""make_logits_fn: flax models with BatchNorm become per-example logits functions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fisher_jax import curvature
from fisher_jax.curvature import dense


class _BatchNormCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(3, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.Dense(3)(x)


def _trained_model():
  """Params and non-trivial running statistics (after two training-mode batches), float64."""
  model = _BatchNormCNN()
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

  @jax.jit
  def measure(params, batch_stats, inputs):
    logits_fn = curvature.make_logits_fn(model, batch_stats)
    return curvature.fisher_trace(logits_fn, params, inputs, estimator='exact', chunk_size=4)

  want = dense.fisher_trace(curvature.make_logits_fn(model, batch_stats), params, inputs,
                            estimator='exact')
  np.testing.assert_allclose(measure(params, batch_stats, inputs), want, rtol=1e-8)
