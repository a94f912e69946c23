"""The training loop's curvature options (measure.per_leaf, measure.eigen_*) and the spectrum
analysis of a checkpoint, end to end on a tiny MLP run."""

import os

import ml_collections
import numpy as np
import pytest

from fisher_jax.analysis import spectrum
from fisher_jax.training import loop
from fisher_jax.training import settings
from fisher_jax.training import writers


@pytest.mark.slow
def test_per_leaf_fisher_eigenvalues_and_checkpoint_spectrum(default_config, tmp_path):
  """One epoch of an MLP with per_leaf and eigen_every_epochs=1: per-leaf Tr(F) metrics that sum
  to Tr(F), k descending Hessian eigenvalues and a positive Fisher top eigenvalue at steps 0..;
  then `python -m fisher_jax.analysis.spectrum` plots the checkpoint's SLQ density, whose top
  node is the logged top Hessian eigenvalue (10%) and whose weights sum to 1 per probe."""
  config = default_config
  config.num_epochs = 1
  config.model.name = 'mlp'
  config.model.width = 16
  config.dataset.train_subset = 256
  config.measure.num_examples = 64
  config.measure.hessian_num_examples = 64
  config.measure.per_leaf = True
  config.measure.eigen_every_epochs = 1
  config.measure.eigen_k = 3
  config.measure.eigen_iterations = 20
  loop.train_and_evaluate(config, str(tmp_path))
  last = [r for r in writers.read_metrics(str(tmp_path)) if 'curvature/fisher_trace' in r][-1]
  leaves = {k: v for k, v in last.items() if k.startswith('curvature/fisher_trace/')}
  assert len(leaves) == 6 and 'curvature/fisher_trace/Dense_0/kernel' in leaves, sorted(leaves)
  np.testing.assert_allclose(sum(leaves.values()), last['curvature/fisher_trace'], rtol=1e-5)
  eigenvalues = [last[f'curvature/hessian_eigenvalue/{j}'] for j in (1, 2, 3)]
  assert eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[0] > 0
  assert last['curvature/fisher_top_eigenvalue'] > 0

  out = tmp_path / 'spectrum.png'
  assert spectrum.main(['--workdir', str(tmp_path), '--out', str(out), '--iterations', '20',
                        '--probes', '2', '--num_examples', '64']) == 0
  assert os.path.getsize(out) > 1000
  saved = np.load(tmp_path / 'spectrum.npz')
  np.testing.assert_allclose(saved['hessian_weights'].sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(saved['hessian_nodes'].max(), eigenvalues[0], rtol=0.1)
  assert saved['fisher_nodes'].min() > -1e-3 * saved['fisher_nodes'].max()  # F is PSD
  assert spectrum.main(['--workdir', str(tmp_path / 'missing'), '--out', str(out)]) == 1


@pytest.mark.parametrize('field,value,message', [
    ('per_leaf', 1, 'measure.per_leaf=1 is invalid'),
    ('eigen_every_epochs', -1, 'measure.eigen_every_epochs=-1'),
    ('eigen_k', 0, 'measure.eigen_k=0'),
    ('eigen_iterations', 2, 'measure.eigen_iterations=2'),  # fewer than eigen_k = 5
])
def test_bad_curvature_measure_fields_fail_naming_the_field(default_config, field, value,
                                                            message):
  assert default_config.measure.per_leaf is False  # off by default
  assert default_config.measure.eigen_every_epochs == 0
  measure = default_config.measure.to_dict()
  measure[field] = value  # (the locked-type ConfigDict itself refuses a non-bool per_leaf)
  with pytest.raises(ValueError, match=message):
    settings.read_measure(ml_collections.ConfigDict(measure))
