"""The sweep runner's submitit executors: stages, skip, resume and diverged, as the local pool.

The jobs run through submitit's LocalExecutor (`--executor submitit_local`), the same code path
as SLURM but for the scheduler: each run is a job whose callable (`executors.RunCommand`) runs
the run's command. Script jobs (`python -c ...`) check the bookkeeping in seconds; tiny
fisher_jax runs (256 training examples: 2 steps per epoch, 3 epochs, every step logged) check
that a two-stage sweep runs in order, that a second submission skips what finished, and that a
job killed after a logged record has its run resume, on resubmission, to the end of an
uninterrupted run. The SLURM parameters (dependencies, partition, time) are checked on the
sbatch script submitit writes, with a stand-in `sbatch` on PATH.
"""

import argparse
import glob
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from experiments import executors
from experiments import run as runner
from experiments import sweeps
from fisher_jax import rundir
from fisher_jax.training import exit_codes

pytest.importorskip('submitit')

TINY = (('model.name', 'mlp'), ('num_epochs', 3), ('dataset.train_subset', 256),
        ('measure.num_examples', 64), ('log_every_steps', 1), ('checkpoint_every_epochs', 1))
COMPARED = ('train/loss', 'train/accuracy', 'val/loss', 'val/accuracy', 'test/loss',
            'test/accuracy', 'curvature/fisher_trace', 'curvature/grad_norm')


@pytest.fixture(autouse=True)
def _repository_root(monkeypatch):
  """Jobs start where the runner starts, the repository root (they import `experiments`)."""
  monkeypatch.chdir(REPO)


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  """One persistent compilation cache for the module's fisher_jax runs (their env's)."""
  cache = str(tmp_path_factory.mktemp('jax_cache'))
  saved = {k: os.environ.get(k) for k in ('JAX_COMPILATION_CACHE_DIR',)}
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  yield cache
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


def _executor(root):
  return executors.make_executor('submitit_local', str(root),
                                 executors.ClusterSettings(time_min=30))


def _script_job(root, key, code, after=()):
  """A job whose command is `python -c code` (a stand-in for fisher_jax.main)."""
  return runner.Job(key, os.path.join(str(root), key), ('-c', code), tuple(after))


def _submit(jobs, root, **kwargs):
  messages = []
  status = executors.submit_jobs(jobs, _executor(root), root=str(root), log=messages.append,
                                 poll_s=0.1, **kwargs)
  return status, messages


def test_script_jobs_keep_order_mark_diverged_and_block_their_dependents(tmp_path):
  order = tmp_path / 'order.txt'
  append = f'open({str(order)!r}, "a").write("{{}}\\n")'
  jobs = [
      _script_job(tmp_path, 's/a', 'import time; time.sleep(0.5); ' + append.format('a')),
      _script_job(tmp_path, 's/b', append.format('b'), after=['s/a']),
      _script_job(tmp_path, 's/div', f'import sys; sys.exit({exit_codes.DIVERGED})'),
      _script_job(tmp_path, 's/after_div', append.format('after_div'), after=['s/div']),
      _script_job(tmp_path, 's/bad', 'import sys; sys.exit(3)'),
      _script_job(tmp_path, 's/after_bad', append.format('after_bad'), after=['s/bad']),
  ]
  status, messages = _submit(jobs, tmp_path, workers=2)
  assert status == {'s/a': 'done', 's/b': 'done', 's/div': 'diverged', 's/after_div': 'blocked',
                    's/bad': 'failed', 's/after_bad': 'blocked'}, messages
  assert order.read_text().split() == ['a', 'b']  # b after a; the blocked runs never ran.
  assert runner.finished(jobs[0]) == 'done' and runner.finished(jobs[2]) == 'diverged'
  assert runner.finished(jobs[4]) is None
  assert any('exit status 3' in m and 's/bad' in m for m in messages), messages
  assert '$ ' in (tmp_path / 's' / 'a' / runner.LOG_FILE).read_text()  # the runner's log
  assert glob.glob(str(tmp_path / executors.SUBMITIT_DIR / '*' / '*.out'))  # submitit's own

  # Again: finished and diverged runs are not submitted; the failed one is, and fails again.
  status, messages = _submit(jobs, tmp_path, workers=2)
  assert status['s/a'] == status['s/b'] == 'skipped' and status['s/div'] == 'diverged'
  assert status['s/bad'] == 'failed' and status['s/after_bad'] == 'blocked'
  assert not any(m.startswith('submit  s/a') or m.startswith('submit  s/div') for m in messages)
  assert order.read_text().split() == ['a', 'b']


def test_execute_prints_the_local_runners_summary_and_exit_status(tmp_path, capsys):
  jobs = [_script_job(tmp_path, 's/ok', ''), _script_job(tmp_path, 's/bad', 'raise SystemExit(2)'),
          _script_job(tmp_path, 's/next', '', after=['s/bad'])]
  handler = signal.getsignal(signal.SIGINT)
  code = executors.execute(jobs, str(tmp_path), 'submitit_local', executors.ClusterSettings())
  out = capsys.readouterr().out
  assert code == 1, out
  assert '3 runs: 1 done, 0 skipped, 0 diverged, 1 failed, 1 blocked' in out, out
  assert '  failed: s/bad' in out and '  blocked: s/next' in out
  assert signal.getsignal(signal.SIGINT) is handler  # its handlers are gone again
  assert executors.execute(jobs[:1], str(tmp_path), 'submitit_local',
                           executors.ClusterSettings()) == 0  # skipped: finished


def test_a_job_starts_its_run_only_after_the_runs_it_waits_for_are_done(tmp_path):
  """What a SLURM job does when it starts: a diverged or unfinished dependency blocks it."""
  ran = tmp_path / 'ran'
  div = _script_job(tmp_path, 's/div', '')
  os.makedirs(div.workdir)
  runner._mark_done(div, runner.DIVERGED)  # pylint: disable=protected-access
  pending = _script_job(tmp_path, 's/pending', '')
  job = _script_job(tmp_path, 's/late', f'open({str(ran)!r}, "w")', after=['s/div'])
  for after in ([div], [pending]):
    command = executors.RunCommand(job, after, sys.executable, str(tmp_path))
    assert command() == runner.BLOCKED
  assert not ran.exists()
  done = _script_job(tmp_path, 's/ok', '')
  os.makedirs(done.workdir)
  runner._mark_done(done)  # pylint: disable=protected-access
  assert executors.RunCommand(job, [done], sys.executable, str(tmp_path))() == runner.DONE
  assert ran.exists()
  # Finished meanwhile (by a duplicate job): nothing runs again.
  assert executors.RunCommand(job, [done], sys.executable, str(tmp_path))() == runner.SKIPPED


def test_slurm_jobs_carry_their_resources_and_dependencies(tmp_path, monkeypatch):
  """The sbatch scripts submitit writes, with a stand-in sbatch that numbers the jobs (and a
  stand-in srun, which submitit only looks for)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  counter = tmp_path / 'counter'
  counter.write_text('100')
  sbatch = bin_dir / 'sbatch'
  sbatch.write_text(f'#!/bin/sh\nn=$(($(cat {counter}) + 1)); echo $n > {counter}\n'
                    'echo "Submitted batch job $n"\n')
  sbatch.chmod(0o755)
  srun = bin_dir / 'srun'  # submitit looks for it before it submits
  srun.write_text('#!/bin/sh\nexit 1\n')
  srun.chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  args = argparse.ArgumentParser()
  executors.add_flags(args)
  settings = executors.cluster_settings(args.parse_args(
      ['--slurm_partition', 'gpu', '--slurm_time', '90', '--slurm_gpus_per_node', '1',
       '--slurm_cpus_per_task', '8', '--slurm_mem_gb', '32']))
  submitter = executors.make_executor('slurm', str(tmp_path), settings)
  first = _script_job(tmp_path, 's/first', '')
  second = _script_job(tmp_path, 's/second', '', after=['s/first'])
  handles = {}
  for job in (first, second):
    waits_for = [handles[a].job_id for a in job.after]
    submitter.update_parameters(name=job.key, **executors.dependency_parameters(waits_for))
    handles[job.key] = submitter.submit(executors.RunCommand(job, [], sys.executable,
                                                             str(tmp_path)))
  assert [h.job_id for h in handles.values()] == ['101', '102']
  scripts = {key: (tmp_path / executors.SUBMITIT_DIR / h.job_id / f'{h.job_id}_submission.sh')
             for key, h in handles.items()}
  first_script, second_script = (scripts[k].read_text() for k in ('s/first', 's/second'))
  for line in ('#SBATCH --partition=gpu', '#SBATCH --time=90', '#SBATCH --gpus-per-node=1',
               '#SBATCH --cpus-per-task=8', '#SBATCH --mem=32GB'):
    assert line in first_script, (line, first_script)
  assert '--dependency' not in first_script
  assert '#SBATCH --dependency=afterok:101' in second_script
  assert '#SBATCH --kill-on-invalid-dep=yes' in second_script
  with pytest.raises(ValueError, match='--slurm_time=0 must be at least 1'):
    executors.cluster_settings(args.parse_args(['--slurm_time', '0']))


def _tiny_jobs(root, *names_after):
  return [runner.make_job('tiny', sweeps.Run(name, 'configs/default.py', TINY, after), str(root))
          for name, after in names_after]


@pytest.fixture(scope='module')
def two_stage(tmp_path_factory, jax_cache):
  """A two-stage sweep of tiny runs, 'second' waiting for 'first', through the executor."""
  del jax_cache
  root = tmp_path_factory.mktemp('sweep')
  jobs = _tiny_jobs(root, ('first', ()), ('second', ('first',)))
  status, messages = _submit(jobs, root, workers=2)
  return root, jobs, status, messages


@pytest.mark.slow
def test_a_two_stage_sweep_runs_in_order_and_is_skipped_when_submitted_again(two_stage):
  root, jobs, status, messages = two_stage
  assert status == {'tiny/first': 'done', 'tiny/second': 'done'}, messages
  first, second = (root / 'tiny' / name for name in ('first', 'second'))
  # 'second' was submitted only when 'first' had ended (one stage after the other).
  assert [m.split()[1] for m in messages if m.startswith(('submit', 'done'))] == [
      'tiny/first', 'tiny/first', 'tiny/second', 'tiny/second'], messages
  assert os.path.getmtime(first / runner.DONE_FILE) <= os.path.getmtime(
      second / rundir.CONFIG_FILE)
  assert rundir.read_records(str(second))[-1]['epoch'] == 3.0
  before = {p: (p / rundir.METRICS_FILE).read_text() for p in (first, second)}

  status, messages = _submit(jobs, root, workers=2)
  assert status == {'tiny/first': 'skipped', 'tiny/second': 'skipped'}, messages
  assert not any(m.startswith('submit') for m in messages), messages
  for path, text in before.items():
    assert (path / rundir.METRICS_FILE).read_text() == text
    assert (path / runner.LOG_FILE).read_text().count('\n$ ') == 1  # started once in all


def _descendants(pid: int):
  """`pid` and every process below it (Linux /proc)."""
  found, queue = [], [pid]
  while queue:
    current = queue.pop()
    found.append(current)
    for children in glob.glob(f'/proc/{current}/task/*/children'):
      try:
        with open(children) as f:
          queue += [int(c) for c in f.read().split()]
      except FileNotFoundError:
        pass
  return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_a_killed_job_resumes_its_run_on_resubmission_and_ends_like_an_uninterrupted_one(
    tmp_path, two_stage):
  reference = two_stage[0] / 'tiny' / 'first'
  jobs = _tiny_jobs(tmp_path, ('first', ()))
  workdir = tmp_path / 'tiny' / 'first'
  handles, result = [], {}

  def submit():
    result['status'], result['messages'] = _submit(
        jobs, tmp_path, on_submit=lambda job, handle: handles.append(handle))

  thread = threading.Thread(target=submit)
  thread.start()
  deadline = time.time() + 600
  # Kill after a logged record past the first epoch's checkpoint (step 2): mid-epoch 2.
  while not (workdir / rundir.METRICS_FILE).exists() or max(
      (r['step'] for r in rundir.read_records(str(workdir))), default=-1) < 3:
    assert time.time() < deadline and thread.is_alive(), result
    time.sleep(0.05)
  for pid in reversed(_descendants(int(handles[0].job_id))):  # the whole job, as a lost node
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  thread.join(timeout=120)
  assert result['status'] == {'tiny/first': 'failed'}, result
  assert runner.finished(jobs[0]) is None
  killed_at = max(r['step'] for r in rundir.read_records(str(workdir)))
  assert 3 <= killed_at < 6

  status, messages = _submit(jobs, tmp_path)
  assert status == {'tiny/first': 'done'}, messages
  assert (workdir / runner.LOG_FILE).read_text().count('\n$ ') == 2  # started, resumed
  got, expected = (rundir.read_records(str(w)) for w in (workdir, reference))
  assert [r['step'] for r in got] == [r['step'] for r in expected]  # every step once
  for name in COMPARED:
    np.testing.assert_allclose(got[-1][name], expected[-1][name], rtol=1e-6, err_msg=name)
  with open(workdir / runner.DONE_FILE) as f:
    assert json.load(f)['result'] == 'done'
