"""The training spine end to end: workdir files, CLI overrides, validation, init_from (a kill
and resume anywhere: test_reliability.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from fisher_jax.training import loop
from fisher_jax.training import writers


def _small(config, epochs=2):
  config.num_epochs = epochs
  config.dataset.train_subset = 512  # 4 steps per epoch: tests exercise the loop, not accuracy.
  config.measure.num_examples = 64
  return config


def _run_cli(workdir, *overrides, timeout=300):
  cmd = [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
         '--workdir', str(workdir), *overrides]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_workdir_holds_config_metrics_events_and_checkpoints(default_config, tmp_path):
  config = _small(default_config, epochs=2)
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert json.load(open(tmp_path / 'config.json')) == json.loads(config.to_json())
  records = writers.read_metrics(str(tmp_path))
  epoch_ends = [r for r in records if 'test/accuracy' in r]
  assert [r['epoch'] for r in epoch_ends] == [1.0, 2.0]
  for record in epoch_ends:
    for name in ('train/loss', 'train/accuracy', 'val/accuracy', 'test/accuracy',
                 'curvature/fisher_trace', 'curvature/fisher_trace_batch',
                 'curvature/grad_norm'):
      assert np.isfinite(record[name]), name
  assert records[0]['step'] == 0 and 'curvature/fisher_trace' in records[0]
  assert final['test/accuracy'] == epoch_ends[-1]['test/accuracy']
  assert final['test/accuracy'] > 0.3  # Learns (well above 0.1 chance) in eight steps.
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  spe = epoch_ends[0]['step']
  assert sorted(os.listdir(tmp_path / 'checkpoints'), key=int) == [str(spe), str(2 * spe)]


@pytest.mark.slow
def test_cli_override_takes_effect_and_is_recorded(tmp_path):
  result = _run_cli(tmp_path, '--config.optimizer.learning_rate=0.003', '--config.num_epochs=1',
                    '--config.dataset.train_subset=256')
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.load(open(tmp_path / 'config.json'))['optimizer']['learning_rate'] == 0.003


@pytest.mark.parametrize('field, value', [
    ('model.name', 'resnet9000'),
    ('dataset.name', 'mnist_typo'),
    ('optimizer.name', 'adagrad_typo'),
    ('optimizer.learning_rate', -0.1),
    ('regularizer.name', 'fisher_typo'),
    ('measure.fisher_estimator', 'guess'),
    ('batch_size', 100),  # Does not split over the 8 devices.
    ('num_epochs', 0),
])
def test_bad_config_fails_naming_the_field_and_writes_nothing(default_config, tmp_path, field,
                                                               value):
  section, _, key = field.rpartition('.')
  (default_config[section] if section else default_config)[key] = value
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    loop.train_and_evaluate(default_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args, names', [
    (('--config.model.name=resnet9000',), 'model.name'),
    (('--config.model.depth=16',), "--config.model.depth: configs/default.py has no field"),
    (('--config.num_epochs=abc',), '--config.num_epochs=abc'),
    (('--config', 'configs/no_such_file.py'), "config file 'configs/no_such_file.py' does not"),
])
def test_cli_bad_config_exits_non_zero_with_one_sentence(tmp_path, args, names):
  result = _run_cli(tmp_path / 'run', *args)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('fisher_jax: ') and names in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_different_config_in_same_workdir_is_refused_and_nothing_changes(
    default_config, tmp_path):
  loop.train_and_evaluate(_small(default_config, epochs=1), str(tmp_path))
  before = {p: os.path.getmtime(p) for p in tmp_path.rglob('*')}
  other = _small(default_config, epochs=1)
  other.optimizer.learning_rate = 0.5
  other.seed = 3
  with pytest.raises(ValueError, match=r'optimizer\.learning_rate.*seed|seed.*learning_rate'):
    loop.train_and_evaluate(other, str(tmp_path))
  assert {p: os.path.getmtime(p) for p in tmp_path.rglob('*')} == before


def test_checkpoints_of_unknown_origin_are_refused(default_config, tmp_path):
  (tmp_path / 'checkpoints' / '5').mkdir(parents=True)
  with pytest.raises(ValueError, match='no config.json'):
    loop.train_and_evaluate(_small(default_config, epochs=1), str(tmp_path))
  assert os.listdir(tmp_path) == ['checkpoints']


@pytest.mark.slow
def test_init_from_starts_at_another_runs_parameters(default_config, tmp_path):
  config = _small(default_config, epochs=1)
  config.measure.fisher_estimator = 'exact'  # Deterministic in (params, measurement subset).
  loop.train_and_evaluate(config, str(tmp_path / 'source'))
  source_files = sorted(str(p) for p in (tmp_path / 'source').rglob('*'))
  config.init_from.workdir = str(tmp_path / 'source')
  config.optimizer.learning_rate = 0.001  # Continued with another optimizer setting.
  loop.train_and_evaluate(config, str(tmp_path / 'continued'))
  source_end = writers.read_metrics(str(tmp_path / 'source'))[-1]
  continued_start = writers.read_metrics(str(tmp_path / 'continued'))[0]
  assert continued_start['step'] == 0 and source_end['step'] > 0
  np.testing.assert_allclose(continued_start['curvature/fisher_trace'],
                             source_end['curvature/fisher_trace'], rtol=1e-5)
  assert sorted(str(p) for p in (tmp_path / 'source').rglob('*')) == source_files


def test_init_from_a_different_model_is_refused(default_config, tmp_path):
  config = _small(default_config, epochs=1)
  loop.train_and_evaluate(config, str(tmp_path / 'source'))
  config.init_from.workdir = str(tmp_path / 'source')
  config.model.hidden = 64
  with pytest.raises(ValueError, match='init_from.workdir'):
    loop.train_and_evaluate(config, str(tmp_path / 'other'))
  assert not (tmp_path / 'other').exists()


def test_label_noise_run_logs_clean_and_noisy_metrics(default_config, tmp_path):
  config = _small(default_config, epochs=1)
  config.dataset.label_noise = 0.25
  loop.train_and_evaluate(config, str(tmp_path))
  last = writers.read_metrics(str(tmp_path))[-1]
  for name in ('train_clean/accuracy', 'train_noisy/accuracy', 'train_clean/grad_norm',
               'train_noisy/grad_norm'):
    assert np.isfinite(last[name]), name
  # After one epoch the network fits the clean labels far better than the noisy ones.
  assert last['train_clean/accuracy'] > last['train_noisy/accuracy']
