"""Hyperparameter search: the Fisher-explosion pruner's rule, and a study shared by processes."""

import ast
import glob
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from conftest import REPO
from experiments import tune
from fisher_jax import pruners

# --- The pruner's rule, on synthetic Tr(F) curves in an in-memory study. ----------------------

# Window of the early phase: epochs [0, 3] (the runs' experiment.early_epochs).
_CONFIG = {'num_epochs': 8, 'experiment': {'early_epochs': 3}}


def _records(fisher, train_accuracy=None):
  """metrics.jsonl-like rows: Tr(F) at epochs 0, 1, ..., train and val accuracy from epoch 1
  on (train accuracy 0.5 unless given: the early phase, up to accuracy 0.8, not over)."""
  train_accuracy = train_accuracy or [0.5] * len(fisher)
  rows = []
  for epoch, (f, a) in enumerate(zip(fisher, train_accuracy)):
    row = {'step': 10 * epoch, 'epoch': float(epoch), 'curvature/fisher_trace': f}
    if epoch:
      row.update({'train/accuracy': a, 'val/accuracy': 0.5})
    rows.append(row)
  return rows


def _add_completed(study, value, fisher, train_accuracy=None):
  rows = _records(fisher, train_accuracy)
  study.add_trial(optuna.trial.create_trial(
      state=optuna.trial.TrialState.COMPLETE, value=value,
      intermediate_values={int(r['epoch']): r['val/accuracy'] for r in rows if 'val/accuracy' in r},
      user_attrs={pruners.METRICS_ATTR: rows, pruners.CONFIG_ATTR: _CONFIG}))


# Good trials (the best half of four: values 0.90, 0.88) peak at 150 and 120 by epoch 3; a bad
# complete trial exploded (900) and must not raise the bar.
_COMPLETED = [(0.90, [100, 120, 140, 150, 150]), (0.88, [100, 110, 115, 120, 118]),
              (0.60, [100, 300, 600, 900, 800]), (0.55, [100, 200, 220, 240, 200])]


def _study(pruner, completed=_COMPLETED):
  study = optuna.create_study(direction='maximize', pruner=pruner)
  for value, fisher in completed:
    _add_completed(study, value, fisher)
  return study


def _replay(study, fisher):
  """Runs a trial through the curve epoch by epoch; returns the epochs at which it is pruned."""
  trial = study.ask()
  pruned = []
  rows = _records(fisher)
  for epoch in range(1, len(fisher)):
    pruners.record_metrics(trial, pd.DataFrame(rows[:epoch + 1]), _CONFIG)
    trial.report(rows[epoch]['val/accuracy'], epoch)
    if trial.should_prune():
      pruned.append(epoch)
  study.tell(trial, state=optuna.trial.TrialState.PRUNED)
  return pruned


def test_fisher_pruner_prunes_an_exploding_trial_after_the_warmup_and_never_before():
  pruner = pruners.FisherExplosionPruner(factor=2.0, warmup_epochs=2, min_completed_trials=3)
  study = _study(pruner)
  # 2x the good trials' largest early Tr(F) by epoch e: 2*120 at e=1, 2*140 at e=2.
  assert pruner.threshold(study, 1) == 240 and pruner.threshold(study, 2) == 280
  exploding = [100, 400, 900, 1500, 1600]  # Above the bar from epoch 1 on.
  assert _replay(study, exploding) == [2, 3, 4]  # Not at epoch 1: inside the warm-up.
  late = [100, 120, 130, 350, 400]  # Above 2*150 only at epoch 3.
  assert _replay(study, late) == [3, 4]
  # No warm-up: the exploding trial goes at its first epoch.
  study.pruner = pruners.FisherExplosionPruner(factor=2.0, warmup_epochs=0,
                                               min_completed_trials=3)
  assert _replay(study, exploding) == [1, 2, 3, 4]


def test_fisher_pruner_never_prunes_the_best_completed_trials_curve():
  for factor in (1.0, 1.5, 2.0):
    for top_fraction in (0.25, 0.5, 1.0):
      pruner = pruners.FisherExplosionPruner(factor=factor, warmup_epochs=0,
                                             min_completed_trials=1, top_fraction=top_fraction)
      study = _study(pruner)
      assert _replay(study, _COMPLETED[0][1]) == []
      # With factor 1 a curve just above the best trial's own is pruned: the rule is tight.
      if factor == 1.0 and top_fraction == 0.25:
        assert _replay(study, [f * 1.01 for f in _COMPLETED[0][1]]) == [1, 2, 3, 4]


def test_fisher_pruner_compares_the_primary_early_fisher_tr_f_until_train_accuracy_0_8():
  pruner = pruners.FisherExplosionPruner(factor=2.0, warmup_epochs=0, min_completed_trials=1)
  study = optuna.create_study(direction='maximize', pruner=pruner)
  # The best trial reached train accuracy 0.8 at epoch 2: its Tr(F_i) is 140, not the 900
  # after it; by epoch 1 it was 120.
  _add_completed(study, 0.9, [100, 120, 140, 900, 900], [None, 0.6, 0.85, 0.9, 0.9])
  assert pruner.threshold(study, 1) == 240 and pruner.threshold(study, 4) == 280
  assert _replay(study, [100, 200, 250, 300, 310]) == [3, 4]


def test_fisher_pruner_waits_for_enough_completed_trials():
  pruner = pruners.FisherExplosionPruner(factor=2.0, warmup_epochs=0, min_completed_trials=3)
  study = _study(pruner, _COMPLETED[:2])
  assert _replay(study, [100, 400, 900, 1500, 1600]) == []
  _add_completed(study, 0.7, [100, 100, 100, 100, 100])
  assert _replay(study, [100, 400, 900, 1500, 1600]) == [1, 2, 3, 4]


def test_fisher_pruner_refuses_parameters_that_could_prune_the_best_trial():
  with pytest.raises(ValueError, match='factor=0.5 must be at least 1'):
    pruners.FisherExplosionPruner(factor=0.5)
  with pytest.raises(ValueError, match=r'top_fraction=0 must be in \(0, 1\]'):
    pruners.FisherExplosionPruner(top_fraction=0)


def test_optuna_is_imported_only_by_the_tuning_modules():
  """Acceptance 4: the core library runs without optuna (it is the `tune` extra)."""
  allowed = {'fisher_jax/pruners.py'}
  for path in glob.glob(os.path.join(REPO, 'fisher_jax', '**', '*.py'), recursive=True):
    tree = ast.parse(open(path).read())
    names = {alias.name.split('.')[0] for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom))
             for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(
                 node.module or '')])}
    relative = os.path.relpath(path, REPO)
    if relative not in allowed:
      assert not names & {'optuna', 'submitit'}, relative


def test_a_space_field_the_config_lacks_is_refused_with_its_name(default_config):
  config = tune.with_overrides(default_config, {'optimizer.learning_rate': 0.1})
  assert config.optimizer.learning_rate == 0.1 and default_config.optimizer.learning_rate != 0.1
  with pytest.raises(ValueError, match="sets 'optimizer.lr', a field the config does not"):
    tune.with_overrides(default_config, {'optimizer.lr': 0.1})


def test_a_diverged_run_is_a_pruned_trial_saying_so_not_an_error(tmp_path, default_config):
  config = tune.with_overrides(default_config, {
      'model.name': 'mlp', 'num_epochs': 2, 'batch_size': 32, 'dataset.train_subset': 64,
      'measure.num_examples': 32})

  def space(trial):  # lr 1e4: the loss is NaN by the end of epoch 2.
    return {'optimizer.learning_rate': trial.suggest_float('optimizer.learning_rate', 1e4, 1e4)}

  study = optuna.create_study(direction='maximize', pruner=tune.make_pruner('median'))
  tune.run_worker(study, tune.Worker(config, space, str(tmp_path), 1, log=lambda line: None), 1)
  diverged, = study.trials
  assert diverged.state.name == 'PRUNED' and diverged.user_attrs['diverged'], diverged
  assert 'diverged at step' in diverged.user_attrs['divergence']
  assert tune.summarize(study)['diverged'] == 1 and tune.study_is_full(study, 1)


# --- Two worker processes on one study, one killed mid-trial. ----------------------------------

_TINY = ['--config', 'configs/default.py', '--space', 'lr', '--pruner', 'none',
         '--config.model.name=mlp', '--config.num_epochs=4', '--config.batch_size=32', '--config.dataset.train_subset=256',
         '--config.measure.num_examples=32']


def _worker(root, trials, seed):
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.tune', *_TINY, '--study', 'tiny', '--root', str(root),
       '--trials', str(trials), '--seed', str(seed)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'XLA_FLAGS': ''})  # One device (not conftest's 8): faster compiles.


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()
                ) if os.path.isdir(os.path.join(workdir, 'checkpoints')) else []


def _running_trial_of(root, pid):
  """The workdir of the trial that process `pid` runs, or None."""
  if not os.path.exists(root / tune.JOURNAL_FILE):
    return None
  storage = tune.make_storage(str(root / tune.JOURNAL_FILE))
  if not storage.get_all_studies():
    return None
  study = optuna.load_study(study_name='tiny', storage=storage)
  for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
    if t.user_attrs.get('worker', '').endswith(f':{pid}') and 'workdir' in t.user_attrs:
      return t.user_attrs['workdir']
  return None


def test_two_workers_share_a_study_and_a_killed_workers_trial_resumes_in_a_retry(tmp_path):
  """Acceptance 1: N trials in total, none twice, every workdir complete; a worker killed
  mid-trial: its trial is failed and retried, and the retry resumes the trial's checkpoint."""
  root, trials = tmp_path / 'study', 3
  victim, other = _worker(root, trials, seed=1), _worker(root, trials, seed=2)
  deadline = time.monotonic() + 240
  workdir = None
  while not (workdir and _checkpoint_steps(workdir)):  # Kill once its trial saved epoch 1.
    assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0]
    workdir = _running_trial_of(root, victim.pid)
    time.sleep(0.1)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  records_at_kill = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert max(json.loads(line)['epoch'] for line in records_at_kill) < 4  # Mid-trial.
  restarted = _worker(root, trials, seed=3)
  outputs = [w.communicate(timeout=300)[0] for w in (other, restarted)]
  assert [other.returncode, restarted.returncode] == [0, 0], outputs
  assert 'its worker died; failed it and queued a retry' in ''.join(outputs), outputs

  study = optuna.load_study(study_name='tiny', storage=tune.make_storage(
      str(root / tune.JOURNAL_FILE)))
  by_state = {}
  for t in study.trials:
    by_state.setdefault(t.state.name, []).append(t)
  assert set(by_state) <= {'COMPLETE', 'FAIL'} and len(by_state['COMPLETE']) == trials, outputs
  failed, = [t for t in by_state['FAIL'] if not t.user_attrs.get('surplus')]
  assert failed.user_attrs['workdir'] == workdir
  retry, = [t for t in study.trials if t.system_attrs.get('failed_trial') == failed.number]
  assert retry.state.name == 'COMPLETE' and retry.params == failed.params
  assert retry.user_attrs['workdir'] == workdir
  # Each complete trial: its own workdir and parameters, run to the end once.
  workdirs = [t.user_attrs['workdir'] for t in by_state['COMPLETE']]
  assert len(set(workdirs)) == trials
  assert len({t.params['optimizer.learning_rate'] for t in by_state['COMPLETE']}) == trials
  for t in by_state['COMPLETE']:
    records = [json.loads(line) for line in open(os.path.join(t.user_attrs['workdir'],
                                                              'metrics.jsonl'))]
    val = [r for r in records if 'val/accuracy' in r]
    assert [r['epoch'] for r in val] == [1.0, 2.0, 3.0, 4.0], t.user_attrs['workdir']
    assert t.value == max(r['val/accuracy'] for r in val) and 'test/accuracy' in val[-1]
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    assert _checkpoint_steps(t.user_attrs['workdir'])[-1] == records[-1]['step']
    steps = [r['step'] for r in records if 'curvature/fisher_trace' in r]
    assert steps == sorted(set(steps))  # No step trained twice.
  # The retry went on from the killed run's checkpoint: it trained only the epochs after it.
  assert retry.user_attrs['start_epoch'] >= 1 and failed.user_attrs.get('start_epoch') is None
  assert all(t.user_attrs['start_epoch'] == 0 for t in by_state['COMPLETE']
             if t.number != retry.number)


# --- The submitit launcher. ---------------------------------------------------------------------


def test_launcher_dry_run_prints_one_worker_command_per_job_with_its_own_seed(capsys):
  from experiments import launch_tune
  assert launch_tune.main(['--workers', '2', '--folder', 'jobs', '--seed', '5', '--dry_run',
                           '--', '--space', 'lr', '--study', 's', '--trials', '8']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('2 jobs, cluster auto')
  assert [line.split(' ', 1)[1] for line in lines[1:]] == [
      '-m experiments.tune --space lr --study s --trials 8 --seed=5',
      '-m experiments.tune --space lr --study s --trials 8 --seed=6']
  with pytest.raises(SystemExit):
    launch_tune.main(['--workers', '2', '--folder', 'jobs', '--', '--seed', '1'])
  assert 'each job then gets its own' in capsys.readouterr().err


def test_launcher_local_jobs_are_tune_workers_of_one_study(tmp_path):
  """Two submitit jobs on a study that is already full: each joins it and finds no work."""
  from experiments import launch_tune
  root = tmp_path / 'study'
  study = optuna.create_study(study_name='s', direction='maximize', storage=tune.make_storage(
      str(root / tune.JOURNAL_FILE)))
  study.add_trial(optuna.trial.create_trial(
      state=optuna.trial.TrialState.COMPLETE, value=0.5, params={'optimizer.learning_rate': 0.1},
      distributions={'optimizer.learning_rate': optuna.distributions.FloatDistribution(
          1e-3, 0.3, log=True)},
      user_attrs={'workdir': 'w', 'epochs': 1.0, 'best_val_epoch': 1.0, 'test_accuracy': 0.4}))
  jobs = launch_tune.submit(
      launch_tune.worker_commands(['--config', 'configs/default.py', '--space', 'lr', '--study',
                                   's', '--trials', '1', '--root', str(root)], 2, seed=0),
      str(tmp_path / 'jobs'), 'local', {'timeout_min': 5})
  for job in jobs:
    assert 'study s: 1 complete; 1 epochs' in job.result()
