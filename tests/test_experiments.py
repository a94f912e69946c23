"""Experiment configs, sweeps and the runner: every run's command builds a valid config; the
runner keeps dependency order, skips finished runs, reports failures; an interrupted sweep
restarts without running a finished run again."""

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from conftest import REPO
from experiments import run as runner
from experiments import sweeps
from fisher_jax import data
from fisher_jax import models
from fisher_jax import regularizers
from fisher_jax.training import optim
from fisher_jax.training import settings


def _parse(job: runner.Job):
  """The config `python -m fisher_jax.main <job.args>` would train: parsed by the same flags."""
  args = list(job.args)
  assert args[:2] == ['-m', 'fisher_jax.main']
  config_index = args.index('--config') + 1
  args[config_index] = os.path.join(REPO, args[config_index])
  argv = ['main', *args[2:]]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=flag_values)
  flag_values(argv)
  return flag_values.config, flag_values.workdir


@pytest.mark.parametrize('scale', sweeps.SCALES)
def test_every_run_of_every_sweep_builds_a_valid_config(scale, tmp_path):
  for name, sweep in sweeps.SWEEPS.items():
    if sweep.study == 'confirmatory' and scale == 'full':  # a CPU-sized protocol
      with pytest.raises(ValueError, match='runs at --scale cpu only'):
        sweep.runs(scale)
      continue
    runs = sweep.runs(scale)
    assert runs, name
    for job in (runner.make_job(name, r, str(tmp_path)) for r in runs):
      config, workdir = _parse(job)
      assert workdir == job.workdir
      assert config.experiment.name == name, job.key
      assert config.experiment.variant and config.experiment.group, job.key
      spec = data.get_spec(config.dataset.name)
      if scale == 'cpu':
        assert config.dataset.name == 'fashion_mnist', job.key
        # The MLP, but for the confirmatory study's descriptive LeNet-5 arm.
        assert config.model.name == ('lenet5' if '/lenet' in job.key else 'mlp'), job.key
      model_kwargs = {k: v for k, v in config.model.items() if k != 'name'}
      models.get_model(config.model.name, spec.num_classes, **model_kwargs)
      regularizers.validate_name(config.regularizer.name)
      run_settings = settings.read(config)  # Checks every field, the optimizer's and penalty's.
      optim.make_optimizer(run_settings.optimizer, run_settings.regularizer, steps_per_epoch=10,
                           num_epochs=run_settings.num_epochs)
      if config.init_from.workdir:
        assert os.path.dirname(config.init_from.workdir) == os.path.join(str(tmp_path), name)


def test_sweeps_vary_what_their_experiment_is_about():
  def configs(name):
    return [_parse(runner.make_job(name, r, '/r'))[0] for r in sweeps.get_sweep(name).runs('cpu')]
  explosion = {c.experiment.variant: c.optimizer.learning_rate
               for c in configs('fisher_explosion')}
  assert explosion['tuned_lr'] > 5 * explosion['small_lr']
  regs = configs('regularizers')  # On CPU the baselines are fisher_explosion's runs.
  assert sorted({c.experiment.variant for c in regs}) == ['fp', 'gp', 'gpr', 'gpx']
  assert all(c.regularizer.name == c.experiment.variant for c in regs)
  assert all(c.optimizer.learning_rate == explosion['small_lr'] for c in regs)
  assert sorted({c.regularizer.strength for c in regs if c.regularizer.name == 'fp'}) == [
      0.03, 0.1, 0.3]
  small = [c for c in configs('fisher_explosion') if c.experiment.variant == 'small_lr']
  assert all(c.num_epochs == 60 for c in small + regs)  # the protocol's slow budget
  starts = sorted(c.regularizer.start_epoch for c in configs('fp_start')
                  if c.regularizer.name == 'fp')
  assert starts == [10, 40]
  memorization = configs('memorization')
  assert all(c.dataset.label_noise > 0 for c in memorization)
  assert sorted(c.regularizer.strength for c in memorization) == [0.0] * 3 + [0.03] * 3 + [0.1] * 3
  every_k = {c.experiment.variant: (c.regularizer.name, c.regularizer.every_k)
             for c in configs('fp_every_k')}
  assert every_k['fp_k10'] == ('fp', 10) and every_k['fp_k1'] == ('fp', 1)
  assert every_k['fp_exact'] == ('fp_per_example', 1)
  assert all(c.measure.hessian_every_epochs == 4 for c in configs('hessian_trace'))
  assert all(c.measure.every_steps == 1 and c.log_every_steps == 1 for c in configs('per_step'))


def test_a_bad_config_argument_names_the_allowed_values():
  from fisher_jax.training import config_files
  with pytest.raises(ValueError, match='tuned_lr'):
    config_files.load_config(os.path.join(REPO, 'configs/fisher_explosion.py:cpu,huge_lr'))
  with pytest.raises(ValueError, match='wrn_cifar100'):
    config_files.load_config(os.path.join(REPO, 'configs/regularizers.py:mnist'))


def test_configs_import_each_other_as_a_package_from_any_directory(tmp_path):
  """`from configs import recipes` in a config file works wherever the run starts."""
  code = ('from fisher_jax import training; '
          f'c = training.load_config({os.path.join(REPO, "configs/regularizers.py:cpu,fp")!r});'
          ' print(c.regularizer.name, c.optimizer.learning_rate)')
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  from configs import recipes  # pylint: disable=g-import-not-at-top
  assert proc.stdout.split() == ['fp', str(recipes.RECIPES[recipes.CPU].small_lr)]


def test_dry_run_prints_one_command_per_run_dependencies_last(tmp_path):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert runner.main(['flat_minima', 'fisher_explosion', '--scale', 'cpu', '--root',
                        str(tmp_path), '--dry_run']) == 0
  lines = out.getvalue().splitlines()
  commands = [shlex.split(line) for line in lines if not line.startswith('#')]
  expected = (len(sweeps.get_sweep('flat_minima').runs('cpu')) +
              len(sweeps.get_sweep('fisher_explosion').runs('cpu')))
  assert len(commands) == expected
  assert all(c[:3] == ['python', '-m', 'fisher_jax.main'] for c in commands)
  stage1 = lines.index(next(line for line in lines if line.startswith('# stage 1')))
  continued = [i for i, line in enumerate(lines) if 'flat_minima.py:cpu,continue' in line]
  assert len(continued) == 6 and min(continued) > stage1
  assert not os.listdir(tmp_path)  # A dry run runs nothing.


def _script_job(root, key, code, after=()):
  """A job whose command is `python -c code` (a stand-in for fisher_jax.main)."""
  return runner.Job(key, os.path.join(root, key), ('-c', code), tuple(after))


def test_run_jobs_keeps_order_skips_finished_and_blocks_after_a_failure(tmp_path):
  log_file = tmp_path / 'order.txt'
  append = f'open({str(log_file)!r}, "a").write("{{}}\\n")'
  jobs = [
      _script_job(str(tmp_path), 's/a', 'import time; time.sleep(0.3); ' + append.format('a')),
      _script_job(str(tmp_path), 's/b', append.format('b'), after=['s/a']),
      _script_job(str(tmp_path), 's/bad', 'import sys; sys.exit(3)'),
      _script_job(str(tmp_path), 's/blocked', append.format('blocked'), after=['s/bad']),
  ]
  messages = []
  status = runner.run_jobs(jobs, workers=2, log=messages.append, poll_s=0.05)
  assert status == {'s/a': 'done', 's/b': 'done', 's/bad': 'failed', 's/blocked': 'blocked'}
  assert log_file.read_text().split() == ['a', 'b']  # b waited for a; blocked never ran.
  assert any('exit status 3' in m for m in messages)
  assert os.path.exists(tmp_path / 's' / 'a' / runner.DONE_FILE)
  assert not os.path.exists(tmp_path / 's' / 'bad' / runner.DONE_FILE)

  # Again: finished runs are skipped, the failed one is tried again.
  status = runner.run_jobs(jobs, workers=2, log=messages.append, poll_s=0.05)
  assert status['s/a'] == status['s/b'] == 'skipped' and status['s/bad'] == 'failed'
  assert log_file.read_text().split() == ['a', 'b']
  # A finished workdir asked to hold a different run is refused, not overwritten.
  changed = _script_job(str(tmp_path), 's/a', append.format('other'))
  assert runner.run_jobs([changed], log=messages.append) == {'s/a': 'failed'}
  assert 'another command' in messages[-1]


_INTERRUPTED_SWEEP = '''
import sys
sys.path.insert(0, {repo!r})
from experiments import run, sweeps
tiny = (('num_epochs', 1), ('measure.every_epochs', 0), ('dataset.train_subset', 256),
        ('checkpoint_every_epochs', 1))
jobs = [run.make_job('tiny', sweeps.Run(name, 'configs/default.py', tiny + (('seed', seed),)),
                     {root!r}) for seed, name in enumerate(('first', 'second'))]
sys.exit(run.execute(jobs, workers=1, root={root!r}))
'''


def _start_sweep(script):
  return subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_an_interrupted_sweep_restarts_without_rerunning_a_finished_run(tmp_path):
  root = tmp_path / 'root'
  script = tmp_path / 'sweep.py'
  script.write_text(_INTERRUPTED_SWEEP.format(repo=REPO, root=str(root)))
  first = root / 'tiny' / 'first'
  second = root / 'tiny' / 'second'

  process = _start_sweep(script)
  lines = []
  for line in process.stdout:  # Wait until the second run has started, then interrupt.
    lines.append(line)
    if line.startswith('start   tiny/second'):
      break
  assert any(line.startswith('done    tiny/first') for line in lines), ''.join(lines)
  process.send_signal(signal.SIGTERM)
  rest, _ = process.communicate(timeout=120)
  assert process.returncode == 130, rest
  assert 'stop    tiny/second' in rest
  assert os.path.exists(first / runner.DONE_FILE)
  assert not os.path.exists(second / runner.DONE_FILE)
  metrics_before = (first / 'metrics.jsonl').read_text()
  mtime_before = os.path.getmtime(first / 'metrics.jsonl')

  process = _start_sweep(script)
  out, _ = process.communicate(timeout=300)
  assert process.returncode == 0, out
  assert 'skip    tiny/first (finished)' in out and 'done    tiny/second' in out
  assert 'start   tiny/first' not in out
  assert (first / 'metrics.jsonl').read_text() == metrics_before
  assert os.path.getmtime(first / 'metrics.jsonl') == mtime_before
  assert (first / runner.LOG_FILE).read_text().count('\n$ ') == 1  # Started once in all.
  assert (second / runner.LOG_FILE).read_text().count('\n$ ') == 2
  final = [json.loads(line) for line in (second / 'metrics.jsonl').read_text().splitlines()]
  assert final[-1]['epoch'] == 1.0 and 'test/accuracy' in final[-1]
