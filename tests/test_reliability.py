"""Nothing lost, whatever happens: divergence, two processes on one workdir, damaged
checkpoints, SIGKILL at every kind of point, a killed sweep runner, a torn metrics line, bad
workdirs.

The runs are tiny (256 training examples: 2 steps per epoch, 3 epochs, every step logged) and
every subprocess shares one persistent compilation cache, filled once by the module's
uninterrupted reference run; each restarted process then costs mostly its imports.
"""

import glob
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from fisher_jax import analysis
from fisher_jax import rundir
from fisher_jax.training import checkpoint
from fisher_jax.training import exit_codes
from fisher_jax.training import guard

FIELDS = {'num_epochs': 3, 'dataset.train_subset': 256, 'measure.num_examples': 64,
          'log_every_steps': 1}
OVERRIDES = tuple(f'--config.{k}={v}' for k, v in FIELDS.items())
STEPS_PER_EPOCH, LAST_STEP = 2, 6
COMPARED = ('train/loss', 'train/accuracy', 'val/loss', 'val/accuracy', 'test/loss',
            'test/accuracy', 'curvature/fisher_trace', 'curvature/grad_norm')
TIMEOUT_S = 900  # A hung run fails the test; a cold compile on a loaded 2-core machine takes minutes.


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _command(workdir, *extra):
  return [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
          '--workdir', str(workdir), *OVERRIDES, *extra]


def _start(workdir, env, *extra, log=None):
  out = open(log, 'w') if log else subprocess.DEVNULL
  return subprocess.Popen(_command(workdir, *extra), cwd=REPO, env=env, stdout=out,
                          stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def _run(workdir, env, *extra):
  return subprocess.run(_command(workdir, *extra), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, env):
  """An uninterrupted run (it also fills the compilation cache)."""
  workdir = tmp_path_factory.mktemp('reference')
  result = _run(workdir, env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _steps(workdir):
  return [r['step'] for r in rundir.read_records(str(workdir))]


def _assert_ends_like(workdir, reference):
  """Every logged step exactly once, and the final metrics of the uninterrupted run."""
  assert _steps(workdir) == _steps(reference)
  got, expected = (rundir.read_records(str(w))[-1] for w in (workdir, reference))
  for name in COMPARED:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, err_msg=name)


def _last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _assert_finite_checkpoints(workdir):
  for step in _checkpoint_steps(workdir):
    _, params, _ = checkpoint.restore_model_variables(os.path.join(workdir, 'checkpoints'), step)
    assert checkpoint.is_finite(params), step


# 1. Divergence.

@pytest.mark.slow
def test_a_diverging_run_stops_at_once_keeps_its_finite_checkpoints_and_says_so(tmp_path, env):
  workdir = tmp_path / 'lr50'
  result = _run(workdir, env, '--config.optimizer.learning_rate=50')
  assert result.returncode == exit_codes.DIVERGED, result.stderr[-3000:]
  message = _last_line(result.stderr)
  assert message.startswith('fisher_jax: training diverged at step ') and 'Traceback' not in (
      result.stderr)
  assert message.count('. ') == 0 and 'train/loss' in message and 'learning rate 50' in message
  record = guard.read_divergence(str(workdir))
  stop = record['step']
  assert f'step {stop}:' in message and record['metric'] == 'train/loss'
  # Every step is logged (log_every_steps=1): the run stopped at the first non-finite loss,
  # logged nothing from it on, and every logged loss before it is finite.
  records = rundir.read_records(str(workdir))
  losses = {r['step']: r['train/loss'] for r in records if 'train/loss' in r}
  assert sorted(losses) == list(range(1, stop)) and all(map(math.isfinite, losses.values()))
  assert max(r['step'] for r in records) < stop
  # The checkpoints before it are kept, all finite; nothing was saved from the divergence on.
  kept = _checkpoint_steps(workdir)
  assert kept and max(kept) < stop and kept == list(range(2, stop, 2))
  _assert_finite_checkpoints(workdir)
  # The analysis knows the run diverged (the report must not average it in as a seed).
  run = analysis.load_run(str(workdir))
  assert run.diverged and run.divergence['step'] == stop
  assert analysis.runs_table([run])['diverged'].tolist() == [True]
  # Started again, it stops at once with the same sentence instead of diverging again.
  again = _run(workdir, env, '--config.optimizer.learning_rate=50')
  assert again.returncode == exit_codes.DIVERGED and _last_line(again.stderr) == message
  assert _checkpoint_steps(workdir) == kept


def test_guard_checks_loss_and_penalty_and_off_lets_training_go_on(default_config):
  guard.check({'train/loss': 1.0, 'regularizer/penalty': 2.0}, 3, 0.1)
  with pytest.raises(guard.DivergedError, match='step 7: regularizer/penalty is inf at learning '
                     'rate 0.1;'):
    guard.check({'train/loss': 1.0, 'regularizer/penalty': math.inf}, 7, 0.1)
  guard.check({'train/loss': math.nan}, 7, 0.1, mode='off')
  from fisher_jax.training import settings  # pylint: disable=g-import-not-at-top
  default_config.guard.nonfinite = 'halt'
  with pytest.raises(ValueError, match=r"guard\.nonfinite='halt' is unknown"):
    settings.read(default_config)


# 2. One process per workdir.

@pytest.mark.slow
def test_a_second_process_on_a_workdir_exits_at_once_and_a_restart_after_sigkill_resumes(
    tmp_path, env, reference):
  workdir = tmp_path / 'run'
  first = _start(workdir, env)
  try:
    deadline = time.time() + TIMEOUT_S
    while 2 not in _checkpoint_steps(workdir):  # Its first checkpoint is committed.
      assert first.poll() is None and time.time() < deadline, 'the first run ended early'
      time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # Holds the lock, trains no further while we look.
    logged = (workdir / 'metrics.jsonl').read_text()
    second = _run(workdir, env)
    assert second.returncode == exit_codes.WORKDIR_BUSY, second.stderr[-3000:]
    assert 'Compiling' not in second.stdout  # It stopped at the lock, before any work.
    assert _last_line(second.stderr) == (
        f"fisher_jax: workdir {str(workdir)!r} is in use by pid {first.pid} on host "
        f"{os.uname().nodename} (one run per workdir); wait for it to end, or stop it, and "
        'start again to resume.')
    assert (workdir / 'metrics.jsonl').read_text() == logged  # The second wrote nothing.
    assert rundir.holder(str(workdir)) == f'pid {first.pid} on host {os.uname().nodename}'
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert rundir.holder(str(workdir)) is None  # The OS released the dead holder's lock.
  third = _run(workdir, env)
  assert third.returncode == 0, third.stderr[-3000:]
  assert 'Resumed from the checkpoint' in third.stdout
  _assert_ends_like(workdir, reference)


def test_the_workdir_lock_is_reentrant_in_a_process_and_exclusive_across(tmp_path):
  with rundir.WorkdirLock(str(tmp_path)) as outer:
    outer.acquire()
    with rundir.WorkdirLock(str(tmp_path)) as inner:
      inner.acquire()
    assert rundir.holder(str(tmp_path)) is not None  # Still held by `outer`.
    other = subprocess.run(
        [sys.executable, '-c', 'import sys; from fisher_jax import rundir as w\n'
         f'try:\n  w.WorkdirLock({str(tmp_path)!r}).acquire()\n'
         'except w.WorkdirBusyError as e:\n  sys.exit(str(e))'],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert f'is in use by pid {os.getpid()}' in other.stderr
  assert rundir.holder(str(tmp_path)) is None


def test_a_workdir_that_is_a_file_or_cannot_be_made_is_one_sentence(default_config, tmp_path):
  from fisher_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = default_config
  config.dataset.train_subset = 256
  config.measure.num_examples = 64
  file = tmp_path / 'file'
  file.write_text('mine')
  with pytest.raises(ValueError, match=r"--workdir '.*file' is a file, not a directory;"):
    loop.train_and_evaluate(config, str(file))
  with pytest.raises(ValueError, match=r"cannot be made \(Not a directory\); choose a "):
    loop.train_and_evaluate(config, str(file / 'run'))
  assert file.read_text() == 'mine'
  config.measure.num_examples = 100000
  with pytest.raises(ValueError, match=r'measure\.num_examples=100000 is larger than the '
                     r'training set \(256 examples\); choose at most 256\.'):
    loop.train_and_evaluate(config, str(tmp_path / 'big'))
  assert not (tmp_path / 'big').exists()


# 3. Damaged checkpoints.

def _largest_array_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, 'default', 'ocdbt.process_0', 'd', '*')),
             key=os.path.getsize)


def _damage(step_dir, kind):
  data = _largest_array_file(step_dir)
  if kind == 'truncated_array':
    os.truncate(data, os.path.getsize(data) // 2)
  elif kind == 'missing_metadata':
    os.remove(os.path.join(step_dir, 'default', '_METADATA'))
  elif kind == 'garbage_manifest':
    with open(os.path.join(step_dir, 'default', 'manifest.ocdbt'), 'wb') as f:
      f.write(random.Random(0).randbytes(300))
  elif kind == 'nonfinite_array':
    _write_nans_into(step_dir)


def _write_nans_into(step_dir):
  """Rewrites the arrays of checkpoint `step_dir` with 1024 NaNs in its largest parameter, as
  garbage that decodes does: the files are well-formed and load, as non-finite values.

  (The chunks are compressed, so garbage bytes written into a file either fail to decode or,
  by chance, decode to NaN or to finite garbage; orbax itself writes the NaNs here.)
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  item = os.path.join(step_dir, 'default')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  checkpointer = ocp.StandardCheckpointer()
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(item).item_metadata.tree)
  tree = jax.tree.map(np.array, jax.device_get(checkpointer.restore(item, abstract)))
  largest = max(jax.tree.leaves(tree['params']), key=np.size)
  largest.reshape(-1)[:1024] = np.nan
  checkpointer.save(os.path.abspath(item + '.nan'), tree)
  checkpointer.wait_until_finished()
  shutil.rmtree(item)
  os.rename(item + '.nan', item)


# configs/default.py with the overrides of the JSON object argv[1] (what OVERRIDES pass to main).
_CONFIG = '''
import json, os, signal, sys
from conftest import load_config
from fisher_jax.training import loop
config = load_config()
for key, value in json.loads(sys.argv[1]).items():
  node = config
  *parents, last = key.split('.')
  for part in parents:
    node = node[part]
  node[last] = value
'''
_RESTART_ALL = _CONFIG + '''
for workdir in sys.argv[2:]:
  loop.train_and_evaluate(config, workdir)
'''


def _script_env(env):
  return dict(env, PYTHONPATH=os.pathsep.join([REPO, f'{REPO}/tests']))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, env, reference):
  kinds = ('truncated_array', 'missing_metadata', 'garbage_manifest', 'nonfinite_array')
  workdirs = []
  for kind in kinds:
    workdir = tmp_path / kind
    shutil.copytree(reference, workdir)
    _damage(str(workdir / 'checkpoints' / str(LAST_STEP)), kind)
    workdirs.append(str(workdir))
  # One process restarts the four runs one after the other (its imports are paid once).
  result = subprocess.run([sys.executable, '-c', _RESTART_ALL, json.dumps(FIELDS), *workdirs],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=_script_env(env))
  assert result.returncode == 0, result.stderr[-3000:]
  reports = [line for line in result.stderr.splitlines()
             if f'The checkpoint at step {LAST_STEP} cannot be read (' in line]
  assert len(reports) == len(kinds), result.stderr[-3000:]
  assert 'non-finite' in reports[-1]
  for workdir, report in zip(workdirs, reports):
    moved = os.path.join(workdir, 'checkpoints_damaged', str(LAST_STEP))
    assert report.endswith(f'it was moved to {moved} and the run resumes from the checkpoint '
                           f'at step {LAST_STEP - 2}.')
    assert os.path.isdir(moved)  # Moved aside, not deleted; a new one took its place.
    assert _checkpoint_steps(workdir) == [2, 4, 6]
    _assert_ends_like(workdir, reference)
    _assert_finite_checkpoints(workdir)


@pytest.mark.slow
def test_no_readable_checkpoint_is_one_sentence_and_nothing_is_moved(tmp_path, env, reference):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  for step in _checkpoint_steps(workdir):
    _damage(str(workdir / 'checkpoints' / str(step)), 'missing_metadata')
  before = sorted(str(p) for p in workdir.rglob('*'))
  result = _run(workdir, env)
  assert result.returncode == exit_codes.ERROR
  message = _last_line(result.stderr)
  assert message.startswith(f'fisher_jax: no checkpoint in {workdir / "checkpoints"} can be '
                            'read (step 6: ') and 'step 2: ' in message, result.stderr[-3000:]
  assert message.endswith('nothing was moved or deleted: repair them, or move them away to '
                          'train from scratch.')
  assert sorted(str(p) for p in workdir.rglob('*')) == before


def test_checkpoints_keep_the_latest_and_the_best_and_never_a_nonfinite_state(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'c'), keep=2, best_metric='val/accuracy')
  for step, accuracy in enumerate([0.1, 0.9, 0.2, 0.3, 0.4, 0.5], start=1):
    ckpt.save(step, {'w': np.full(3, float(step))}, metrics={'val/accuracy': accuracy})
    ckpt.wait()
  with pytest.raises(checkpoint.NonFiniteStateError):
    ckpt.save(7, {'w': np.array([1.0, np.nan, 0.0])}, metrics={'val/accuracy': 1.0})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 5, 6] and ckpt.best_step() == 2
  step, state = ckpt.restore_latest({'w': np.zeros(3)})
  assert step == 6 and state['w'].tolist() == [6.0] * 3
  ckpt.close()


# 4. SIGKILL at every kind of point.

# A run that SIGKILLs itself from `on_epoch` at the end of epoch argv[3] (or the first epoch
# end after it), right after that epoch's records are written and its checkpoint save has
# started (orbax saves asynchronously).
_KILL_AT_EPOCH_END = _CONFIG + '''
def on_epoch(epoch):
  if epoch >= int(sys.argv[3]):
    os.kill(os.getpid(), signal.SIGKILL)
  return False
loop.train_and_evaluate(config, sys.argv[2], on_epoch=on_epoch)
'''


def _wait_for(condition, process, timeout=TIMEOUT_S):
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.01)
  return True


def _holds_lock(workdir, pid) -> bool:
  """Whether the workdir's lock file names `pid` as its holder (written once the lock is taken)."""
  try:
    with open(os.path.join(workdir, rundir.LOCK_FILE)) as f:
      return f.read().split()[:1] == [str(pid)]
  except FileNotFoundError:
    return False


def _kill(workdir, env, log, point) -> int:
  """Starts the run in `workdir` and SIGKILLs it at `point`; the last step logged then.

  Points (each an event of the run, never a time):
    ('lock',): once the run holds the workdir's lock (before it logs anything).
    ('record',): once a step logged by no earlier start appears in metrics.jsonl (before
      any checkpoint when it is step 0, mid-epoch when it is an odd step).
    ('epoch_end', e): the run kills itself at the end of epoch e, its save in flight.
  """
  with open(log, 'a') as out:
    if point[0] == 'epoch_end':
      process = subprocess.Popen(
          [sys.executable, '-c', _KILL_AT_EPOCH_END, json.dumps(FIELDS), str(workdir),
           str(point[1])], cwd=REPO, env=_script_env(env), stdout=out, stderr=out)
      process.wait(timeout=TIMEOUT_S)
    else:
      process = subprocess.Popen(_command(workdir), cwd=REPO, env=env, stdout=out, stderr=out)
      if point[0] == 'lock':
        reached = _wait_for(lambda: _holds_lock(workdir, process.pid), process)
      else:
        target = max(_steps(workdir), default=-1) + 1
        reached = _wait_for(lambda: target in _steps(workdir), process)
      process.send_signal(signal.SIGKILL)
      process.wait()
      assert reached, (point, open(log).read()[-3000:])
  assert process.returncode == -signal.SIGKILL, (point, open(log).read()[-3000:])
  return max(_steps(workdir), default=-1)


@pytest.mark.slow
def test_sigkill_at_every_kind_of_point_and_restart_ends_like_an_uninterrupted_run(
    tmp_path, env, reference):
  """One run killed seven times (before its first record, before its first checkpoint, during
  saves, mid-epoch, at the last step) and with a torn metrics line: every logged step appears
  once, and the final metrics are the uninterrupted run's."""
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  points = [('lock',), ('record',), ('epoch_end', 1), ('record',), ('epoch_end', 2),
            ('record',), ('epoch_end', 3)]
  logged = []
  for number, point in enumerate(points):
    logged.append(_kill(workdir, env, log, point))
    if number == 3:  # Killed mid-epoch 2: a torn write after it, repaired on resume.
      with open(workdir / 'metrics.jsonl', 'a') as f:
        f.write('{"step": 99, "epoch": 49.5, "train/lo')
  # The last step logged when each kill struck (-1: nothing yet). A run kills itself at an epoch
  # end right after that epoch's record; the other kills strike at the first new record (step
  # 0 before any checkpoint, then mid-epoch) or a moment after it.
  print('last logged step at each kill:', list(zip(points, logged)))
  assert [n for p, n in zip(points, logged) if p[0] == 'epoch_end'] == [2, 4, LAST_STEP]
  final = _run(workdir, env)
  assert final.returncode == 0, final.stderr[-3000:]
  _assert_ends_like(workdir, reference)


# 5. The sweep runner's children die with it.

_SWEEP = '''
import sys
sys.path.insert(0, {repo!r})
from experiments import run, sweeps
tiny = {fields!r}
jobs = [run.make_job('tiny', sweeps.Run(name, 'configs/default.py', tiny + (('seed', seed),)),
                     {root!r}) for seed, name in enumerate(('first', 'second'))]
sys.exit(run.execute(jobs, workers=1, root={root!r}))
'''


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[-1][0] != 'Z'  # A zombie is dead, waiting to be reaped.
  except FileNotFoundError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux')
def test_sigkill_of_the_sweep_runner_kills_its_runs_and_a_restart_finishes_each_once(
    tmp_path, env):
  root = tmp_path / 'root'
  script = tmp_path / 'sweep.py'
  script.write_text(_SWEEP.format(repo=REPO, root=str(root), fields=tuple(FIELDS.items())))
  workdirs = [root / 'tiny' / name for name in ('first', 'second')]
  runner = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + TIMEOUT_S
  while not (rundir.holder(str(workdirs[0])) and _steps(workdirs[0])):  # It trains.
    assert runner.poll() is None and time.time() < deadline
    time.sleep(0.05)
  child = int(rundir.holder(str(workdirs[0])).split()[1])
  runner.send_signal(signal.SIGKILL)
  runner.wait()
  deadline = time.time() + 10
  while _alive(child) and time.time() < deadline:
    time.sleep(0.05)
  assert not _alive(child), 'the run outlived the runner'
  assert not os.path.exists(workdirs[0] / 'runner_done.json') and not workdirs[1].exists()

  again = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT_S)
  assert again.returncode == 0, again.stdout[-3000:]
  assert 'done    tiny/first' in again.stdout and 'done    tiny/second' in again.stdout
  for w, starts in zip(workdirs, (2, 1)):
    assert _steps(w) == list(range(LAST_STEP + 1)), w  # Each logged step once.
    assert (w / 'runner.log').read_text().count('\n$ ') == starts
    assert json.load(open(w / 'runner_done.json'))['result'] == 'done'


def test_the_runner_records_diverged_runs_and_never_starts_a_held_workdir(tmp_path):
  from experiments import run as runner  # pylint: disable=g-import-not-at-top
  diverges = runner.Job('s/lr', str(tmp_path / 's' / 'lr'),
                        ('-c', f'import sys; sys.exit({exit_codes.DIVERGED})'))
  after = runner.Job('s/after', str(tmp_path / 's' / 'after'), ('-c', 'pass'), ('s/lr',))
  held = runner.Job('s/held', str(tmp_path / 's' / 'held'), ('-c', 'pass'))
  messages = []
  with rundir.WorkdirLock(held.workdir) as lock:
    lock.acquire()
    def release_later(message):
      messages.append(message)
      if message.startswith('wait    s/held'):
        lock.release()  # The holder ends: the runner may start it now.

    status = runner.run_jobs([diverges, after, held], log=release_later, poll_s=0.05)
  assert status == {'s/lr': 'diverged', 's/after': 'blocked', 's/held': 'done'}
  assert any(m.startswith(f'wait    s/held: its workdir is in use by pid {os.getpid()}')
             for m in messages)
  assert runner.run_jobs([diverges], log=messages.append) == {'s/lr': 'diverged'}
  assert messages[-1] == 'skip    s/lr (diverged)'


# 6. metrics.jsonl: strict JSON, a torn last line, nothing else skipped.

def test_metrics_are_strict_json_and_a_torn_last_line_is_skipped_and_repaired(tmp_path):
  lines = [rundir.format_record(s, s / 2, {'train/loss': v})
           for s, v in enumerate([0.5, math.nan, math.inf, -math.inf])]
  def strict(constant):
    raise AssertionError(f'not strict JSON: {constant}')
  assert [json.loads(line, parse_constant=strict)['train/loss'] for line in lines] == [
      0.5, 'NaN', 'Infinity', '-Infinity']
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(lines) + lines[0][:17])  # A crash tore the last write.
  records = rundir.read_records(str(tmp_path))
  assert [r['step'] for r in records] == [0, 1, 2, 3]
  assert math.isnan(records[1]['train/loss']) and records[2]['train/loss'] == math.inf
  frame = analysis.read_metrics(str(tmp_path))
  assert frame['step'].tolist() == [0, 1, 2, 3] and frame['train/loss'].iloc[3] == -math.inf
  rundir.prepare_for_resume(str(tmp_path), 2)  # Resumed from the checkpoint at step 2.
  assert path.read_text() == ''.join(lines[:3])
  rundir.prepare_for_resume(str(tmp_path), None)  # Started from scratch.
  assert path.read_text() == ''
  path.write_text(lines[0] + lines[1][:10] + '\n' + lines[2])  # Damage before the last line.
  with pytest.raises(ValueError, match=r'metrics\.jsonl line 2 is not JSON'):
    analysis.read_metrics(str(tmp_path))


def test_the_metrics_file_has_one_record_per_logged_step_without_speed_reports(tmp_path):
  from fisher_jax.training import writers  # pylint: disable=g-import-not-at-top
  writer = writers.JsonlWriter(str(tmp_path), steps_per_epoch=2)
  writer.write_scalars(4, {'train/loss': 0.25, 'test/accuracy': 0.5})
  writer.write_scalars(4, {'steps_per_sec': 3.0, 'uptime': 9.0})  # clu's ReportProgress.
  writer.write_scalars(4, {'perf/steps_per_sec': 3.0})
  writer.close()
  assert rundir.read_records(str(tmp_path)) == [
      {'step': 4, 'epoch': 2.0, 'train/loss': 0.25, 'test/accuracy': 0.5}]
