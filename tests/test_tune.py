"""Hyperparameter search: a study shared by processes, its trials, the submitit launcher."""

import ast
import glob
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import REPO
from experiments import tune

# The pruners' rules and the replay benchmark: tests/test_pruners.py.


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


@pytest.mark.slow
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
