"""over_batches: whole-dataset means over uneven batches, standard errors, the probe part."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cases
from fisher_jax import curvature


def _split(inputs, labels, sizes):
  edges = np.cumsum([0] + list(sizes))
  return [{'image': inputs[a:b], 'label': labels[a:b]} for a, b in zip(edges[:-1], edges[1:])]


def test_mean_over_uneven_batches_equals_the_concatenated_batch(x64):
  """Batches of 5, 3 and 7: the example-weighted mean of Tr(F) 'exact' (and of the mean
  loss) is the one-batch value on all 15; the standard error is the weighted formula; the
  progress callback sees every batch."""
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp', batch=15)
  batches = _split(inputs, labels, (5, 3, 7))

  @cases.cheap_jit
  def measure(batch):
    return {'fisher': curvature.fisher_trace(logits_fn, params, batch['image'],
                                             estimator='exact'),
            'loss': curvature.make_loss_fn(logits_fn, batch['image'], batch['label'])(params)}
  seen = []
  result = curvature.over_batches(measure, batches, progress=lambda *a: seen.append(a))
  whole = measure({'image': inputs, 'label': labels})
  for name in whole:
    np.testing.assert_allclose(result.mean[name], whole[name], rtol=1e-12)
  assert (result.num_examples, result.num_batches) == (15, 3)
  assert seen == [(1, 5), (2, 8), (3, 15)]
  values = np.array([float(measure(b)['fisher']) for b in batches])
  w = np.array([5, 3, 7]) / 15
  se = np.sqrt(3 / 2 * np.sum(w ** 2 * (values - np.sum(w * values)) ** 2))
  np.testing.assert_allclose(result.standard_error['fisher'], se, rtol=1e-12)
  # Equal weights over equal batches: the familiar std / sqrt(K).
  equal = curvature.over_batches(measure, _split(inputs, labels, (5, 5, 5)), weights='batches')
  values = [float(measure(b)['fisher']) for b in _split(inputs, labels, (5, 5, 5))]
  np.testing.assert_allclose(equal.standard_error['fisher'],
                             np.std(values, ddof=1) / np.sqrt(3), rtol=1e-12)
  assert result.probe_standard_error is None


def test_stochastic_measures_report_the_probe_part_separately(x64):
  """Per-leaf Tr(H) by Hutchinson over 4 batches with independent probes per batch (rng):
  the probe part is sqrt(Σ w_b² s_b²) of the batches' own standard errors, the data part the
  rest of the between-batch variance."""
  logits_fn, params, inputs, labels = cases.fisher_problem('mlp', batch=16)
  batches = _split(inputs, labels, (4, 4, 4, 4))

  @cases.cheap_jit
  def measure(batch, rng):
    loss_fn = curvature.make_loss_fn(logits_fn, batch['image'], batch['label'])
    return curvature.hessian_trace(loss_fn, params, rng=rng, num_probes=8, per_leaf=True)
  rng = jax.random.PRNGKey(0)
  result = curvature.over_batches(measure, batches, with_stderr=True, rng=rng)
  outs = [measure(b, jax.random.fold_in(rng, i)) for i, b in enumerate(batches)]
  for path in ('Dense_0', 'Dense_1'):
    for leaf in ('kernel', 'bias'):
      means = np.array([float(o[0][path][leaf]) for o in outs])
      errs = np.array([float(o[1][path][leaf]) for o in outs])
      np.testing.assert_allclose(result.mean[path][leaf], means.mean(), rtol=1e-12)
      probe = np.sqrt(np.sum(errs ** 2)) / 4
      np.testing.assert_allclose(result.probe_standard_error[path][leaf], probe, rtol=1e-12)
      total = np.std(means, ddof=1) / 2
      np.testing.assert_allclose(result.standard_error[path][leaf], total, rtol=1e-12)
      np.testing.assert_allclose(result.data_standard_error[path][leaf],
                                 np.sqrt(max(total ** 2 - probe ** 2, 0.0)), rtol=1e-12,
                                 atol=1e-15)


def test_over_batches_rejects_bad_input():
  with pytest.raises(ValueError, match="'examples', 'batches'"):
    curvature.over_batches(lambda b: b, [jnp.ones(2)], weights='uniform')
  with pytest.raises(ValueError, match='no batches'):
    curvature.over_batches(lambda b: b, [])
