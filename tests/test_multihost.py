"""Multi-process runs: 2 processes x 4 fake CPU devices give the numbers of 1 process x 8.

The processes are `python -m fisher_jax.main` joined by `jax.distributed` on the loopback address
with gloo CPU collectives, as processes on several hosts are. To fit a few minutes on 2 cores the
runs are small (256 training examples: 2 steps per epoch) and shared by the tests (module
fixtures), and the subprocesses share a persistent compilation cache, so that only the first
two-process run compiles.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from fisher_jax import data
from fisher_jax.training import checkpoint
from fisher_jax.training import loop
from fisher_jax.training import multihost
from fisher_jax.training import writers

EPOCHS = 3
FIELDS = {'num_epochs': EPOCHS, 'dataset.train_subset': 256, 'measure.num_examples': 64}
OVERRIDES = tuple(f'--config.{k}={v}' for k, v in FIELDS.items())
COMPARED = ('train/loss', 'train/accuracy', 'val/loss', 'val/accuracy', 'test/loss',
            'test/accuracy', 'curvature/fisher_trace', 'curvature/fisher_trace_batch',
            'curvature/grad_norm')
RUN_TIMEOUT_S = 600  # A hung run fails the test instead of blocking it forever.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class _Processes:
  """`python -m fisher_jax.main` started as processes of one run, each with 4 CPU devices."""

  def __init__(self, workdir, logdir, name, process_ids=(0, 1), num_processes=2, port=None,
               timeout_s=120, extra=()):
    port = port or _free_port()
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
               JAX_COMPILATION_CACHE_DIR=str(logdir / 'jax_cache'),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    self.logs = [logdir / f'{name}.{i}.log' for i in process_ids]
    self.procs = []
    for i, log in zip(process_ids, self.logs):
      cmd = [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
             '--workdir', str(workdir), *OVERRIDES, f'--coordinator_address=127.0.0.1:{port}',
             f'--num_processes={num_processes}', f'--process_id={i}',
             f'--distributed_timeout={timeout_s}', *extra]
      with open(log, 'w') as out:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                           stderr=subprocess.STDOUT))

  def wait(self, timeout=RUN_TIMEOUT_S):
    deadline = time.time() + timeout
    try:
      return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]
    finally:
      self.kill()

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()

  def alive(self) -> bool:
    return all(p.poll() is None for p in self.procs)

  def log(self, i: int) -> str:
    return self.logs[i].read_text()


def _committed_steps(workdir):
  """Steps of the complete checkpoints (orbax renames a checkpoint's folder when it is done)."""
  folder = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.exists() else []


def _by_step(workdir):
  """metrics.jsonl as {step: {compared metric: value}} (timing records left out)."""
  out = {}
  for record in writers.read_metrics(str(workdir)):
    values = {k: v for k, v in record.items() if k in COMPARED}
    if values:
      assert record['step'] not in out, f'step {record["step"]} logged twice'
      out[record['step']] = values
  return out


def _params(workdir):
  return checkpoint.restore_model_variables(str(workdir / 'checkpoints'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The 1-process 8-device reference (in this process) and the uninterrupted 2-process run."""
  root = tmp_path_factory.mktemp('multihost')
  two = _Processes(root / 'two', root, 'two')
  config = load_config('default')
  for key, value in FIELDS.items():
    section, _, field = key.rpartition('.')
    setattr(config.get(section) if section else config, field, value)
  assert jax.process_count() == 1 and jax.device_count() == 8
  try:
    loop.train_and_evaluate(config, str(root / 'one'))
  finally:
    codes = two.wait()
  assert codes == [0, 0], two.log(0)[-3000:] + two.log(1)[-3000:]
  return root, two


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(runs):
  root, two = runs
  assert 'process 0 of 2 with 4 of the 8 devices' in two.log(0)
  assert 'process 1 of 2 with 4 of the 8 devices' in two.log(1)
  one, multi = _by_step(root / 'one'), _by_step(root / 'two')
  assert sorted(multi) == sorted(one) == [0, 2, 4, 6]
  for step, expected in one.items():
    assert sorted(multi[step]) == sorted(expected), step
    for name, value in expected.items():
      np.testing.assert_allclose(multi[step][name], value, rtol=1e-5, err_msg=f'{name} @ {step}')
  assert one[6]['train/loss'] < one[2]['train/loss']  # It trained: the equality is not idle.
  (step_1, params_1, _), (step_2, params_2, _) = _params(root / 'one'), _params(root / 'two')
  assert step_1 == step_2 == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_2, params_1)


@pytest.mark.slow
def test_every_eval_example_counts_once_across_processes(runs):
  root, _ = runs
  # The splits do not divide into global batches of 128 split over 2 processes, so each process
  # pads its shard; padding counted, or an example missed or counted twice, would move the
  # means away from the one-process run's (and accuracy x N off an integer).
  inp = data.make_input(load_config('default').dataset, batch_size=128, seed=0)
  sizes = {split: inp.num_examples(split) for split in ('val', 'test')}
  assert all(n % 128 for n in sizes.values()), sizes
  one, multi = _by_step(root / 'one'), _by_step(root / 'two')
  for split, size in sizes.items():
    for step in (2, 6):
      correct = multi[step][f'{split}/accuracy'] * size
      assert abs(correct - round(correct)) < 1e-6, (split, step, correct)
      np.testing.assert_allclose(multi[step][f'{split}/loss'], one[step][f'{split}/loss'],
                                 rtol=1e-6)


@pytest.mark.slow
def test_only_process_zero_writes(runs):
  root, two = runs
  files = sorted(os.listdir(root / 'two'))
  assert [f for f in files if not f.startswith('events.out.tfevents')] == [
      'checkpoints', 'config.json', 'lock', 'metrics.jsonl']  # The lock: process 0's.
  assert len([f for f in files if f.startswith('events.out.tfevents')]) == 1
  for line in ('epoch 1/', 'steps/s', 'best val accuracy'):  # The console: process 0's.
    assert line in two.log(0), line
  for line in ('starting in', 'epoch 1/', 'Tr(F)', 'steps/s', 'best val accuracy'):
    assert line not in two.log(1), line
  assert 'Hyperparameters' not in two.log(0) + two.log(1)  # config.json and TensorBoard's.


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(runs):
  root, _ = runs
  workdir = root / 'killed'
  first = _Processes(workdir, root, 'killed')
  deadline = time.time() + RUN_TIMEOUT_S
  while first.alive() and time.time() < deadline and not _committed_steps(workdir):
    time.sleep(0.05)
  alive = first.alive()
  first.kill()  # SIGKILL both, as a preemption would.
  assert alive, 'the run ended before it could be killed: ' + first.log(0)[-3000:]
  killed_at = max(_by_step(workdir))
  assert 2 <= killed_at < 2 * EPOCHS

  second = _Processes(workdir, root, 'resumed')
  assert second.wait() == [0, 0], second.log(0)[-3000:] + second.log(1)[-3000:]
  assert 'Resumed from the checkpoint' in second.log(0)
  expected, got = _by_step(root / 'two'), _by_step(workdir)
  assert sorted(got) == sorted(expected)  # Each point logged once across the restart.
  for step in expected:
    for name, value in expected[step].items():
      np.testing.assert_allclose(got[step][name], value, rtol=1e-6, err_msg=f'{name} @ {step}')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _params(workdir)[1], _params(root / 'two')[1])


@pytest.mark.slow
def test_failure_to_connect_ends_with_one_sentence_after_the_timeout(tmp_path):
  lonely = _Processes(tmp_path / 'a', tmp_path, 'lonely', process_ids=(0,), timeout_s=5)
  # Process 1 pointed at a port where no coordinator listens (a wrong port).
  astray = _Processes(tmp_path / 'b', tmp_path, 'astray', process_ids=(1,), timeout_s=5)
  bad = _Processes(tmp_path / 'c', tmp_path, 'bad', process_ids=(0,), extra=('--distributed=off',))
  codes = [lonely.wait(RUN_TIMEOUT_S)[0], astray.wait(RUN_TIMEOUT_S)[0],
           bad.wait(RUN_TIMEOUT_S)[0]]
  assert codes == [1, 1, 1]
  expected = ['process 0 of 2 waited 5 s', 'process 1 of 2 could not join the coordinator',
              '--distributed=off contradicts']
  for procs, text in zip((lonely, astray, bad), expected):
    last = procs.log(0).strip().splitlines()[-1]
    assert last.startswith('fisher_jax: ') and text in last, procs.log(0)[-2000:]
    assert 'Traceback' not in procs.log(0)
  assert not any((tmp_path / d).exists() for d in 'abc')  # Nothing was written.


# The start-up settings, in this process (none of these reaches jax.distributed.initialize).


@pytest.mark.parametrize('kwargs, environ, match', [
    (dict(num_processes=2, process_id=0), {}, 'coordinator_address'),
    (dict(coordinator_address='h:1', process_id=0), {}, 'num_processes'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), {}, r'--process_id=2'),
    (dict(coordinator_address='h:1', num_processes=0, process_id=0), {}, r'--num_processes=0'),
    (dict(coordinator_address='h', num_processes=2, process_id=1), {}, 'needs a port'),
    ({}, {multihost.ENV_NUM_PROCESSES: 'two'}, multihost.ENV_NUM_PROCESSES),
    (dict(num_processes=2, process_id=1, mode='off'), {}, '--distributed=off'),
    (dict(mode='sometimes'), {}, '--distributed'),
])
def test_bad_settings_are_value_errors_naming_the_flag(kwargs, environ, match):
  with pytest.raises(ValueError, match=match):
    multihost.initialize_distributed(**kwargs, environ=environ)


def test_single_process_needs_nothing():
  assert not multihost.initialize_distributed(environ={})
  assert not multihost.initialize_distributed(num_processes=1, environ={})
  assert not multihost.initialize_distributed(
      environ={multihost.ENV_NUM_PROCESSES: '1', multihost.ENV_PROCESS_ID: '0'})
  assert not multihost.initialize_distributed(mode='off', environ={})
  assert not jax.distributed.is_initialized()


def test_detect_cluster_only_for_launches_of_several_processes():
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]', 'SLURM_NTASKS': '16',
           'SLURM_PROCID': '3', 'SLURM_LOCALID': '3'}
  assert multihost.detect_cluster(slurm) == 'slurm'
  assert multihost.detect_cluster({**slurm, 'SLURM_NTASKS': '1'}) is None  # sbatch of 1 task
  assert multihost.detect_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}) is None  # no srun
  assert multihost.detect_cluster({'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '4'}) \
      == 'openmpi'
  assert multihost.detect_cluster({}) is None  # This machine: no TPU.
