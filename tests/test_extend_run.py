"""A finished run continues to a larger num_epochs, keeping its
best-by-validation checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_config
from fisher_jax.training import checkpoint
from fisher_jax.training import loop
from fisher_jax.training import writers

# Small and quick: the zoo's MLP, 4 steps per epoch; only the latest checkpoint and the best.
FIELDS = {'model.name': 'mlp', 'dataset.train_subset': 512, 'measure.num_examples': 64,
          'checkpoint_keep': 1}


def _config(num_epochs, **fields):
  config = load_config('default')
  config.num_epochs = num_epochs
  for field, value in {**FIELDS, **fields}.items():
    section, _, key = field.rpartition('.')
    (config[section] if section else config)[key] = value
  return config


def _by_step(workdir):
  return {r['step']: r for r in writers.read_metrics(str(workdir))}


@pytest.mark.slow
def test_a_finished_run_continues_to_more_epochs_like_an_uninterrupted_run(tmp_path):
  extended, straight = tmp_path / 'extended', tmp_path / 'straight'
  loop.train_and_evaluate(_config(3), str(extended))
  cmd = [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
         '--workdir', str(extended), '--config.num_epochs=5',
         *(f'--config.{k}={v}' for k, v in FIELDS.items())]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 12 (epoch 3).' in result.stdout
  assert 'epoch 4/5' in result.stdout and 'epoch 5/5' in result.stdout
  assert 'epoch 3/5' not in result.stdout  # Nothing before the checkpoint is run again.
  assert json.load(open(extended / 'config.json'))['num_epochs'] == 5

  loop.train_and_evaluate(_config(5), str(straight))
  got, expected = _by_step(extended), _by_step(straight)
  assert sorted(got) == sorted(expected) == [0, 4, 8, 12, 16, 20]
  for step, record in expected.items():
    assert sorted(got[step]) == sorted(record), step
    for name, value in record.items():
      np.testing.assert_allclose(got[step][name], value, rtol=1e-6, err_msg=f'{name} @ {step}')

  # The best-by-validation checkpoint is kept besides the latest, across the resume.
  best = max((r for r in got.values() if 'val/accuracy' in r), key=lambda r: r['val/accuracy'])
  ckpt = checkpoint.Checkpointer(str(extended / 'checkpoints'), keep=1, best_metric='val/accuracy')
  assert ckpt.best_step() == best['step']
  assert sorted(ckpt.all_steps()) == sorted({best['step'], 20})
  ckpt.close()

  # Fewer epochs than the run has done: refused, nothing touched.
  files = lambda: {p: os.path.getmtime(p) for p in extended.rglob('*')  # noqa: E731
                   if p.name != 'lock'}  # The lock file names its latest holder.
  before = files()
  with pytest.raises(ValueError, match=r'num_epochs=4 is below the 5 epochs .*'
                                       r'--config\.num_epochs=5 or more'):
    loop.train_and_evaluate(_config(4), str(extended))
  assert files() == before


def test_num_epochs_of_a_cosine_schedule_cannot_change(tmp_path):
  config = _config(3, **{'optimizer.schedule': 'cosine'})
  tmp_path.joinpath('config.json').write_text(config.to_json())  # A run's workdir.
  config.num_epochs = 5
  with pytest.raises(ValueError, match=r"num_epochs=5 differs from the 3 .*schedule='cosine'"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path) == ['config.json']
