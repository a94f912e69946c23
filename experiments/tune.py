"""Hyperparameter search on Optuna: each trial one ordinary fisher_jax run in its own workdir.

  python -m experiments.tune --config configs/default.py --space lr --study lr8 --trials 8 \
      [--pruner fisher|median|fisher_or_median|successive_halving|hyperband|none] \
      [--root DIR] [--storage URL] [--config.num_epochs=6 ...]

Needs the `tune` extra (optuna). The study lives in `--storage`: by default the journal file
ROOT/study.journal next to its runs (ROOT defaults to runs/tune/STUDY); a database URL
(postgresql://..., mysql://..., sqlite:///...) shares it across machines. Start the same command
in several processes or on several machines: they share the study's trials, which run in
ROOT/trial_NNNN/ (an ordinary run directory: config.json, metrics.jsonl, checkpoints/). Each
process runs trials until the study holds `--trials` trials that did not fail.

A trial is `fisher_jax.training.loop.train_and_evaluate` of CONFIG (with the `--config.*` overrides
given here) and the overrides of the search space `--space` (configs/spaces.py). After every
epoch `report_epochs` stores its per-epoch curves (Tr(F), training and validation accuracy) as
the trial's user attribute `metrics` (what `FisherExplosionPruner` reads) and reports its
validation accuracy to Optuna (`trial.report(val/accuracy, epoch)`, what the other pruners
read); the pruner may then stop it. The objective is the run's best validation accuracy
(`best_epoch`); the test accuracy at that epoch is stored as the user attribute
`test_accuracy` and reported, never used to select.

Trial states: COMPLETE (ran to the end), PRUNED (stopped by the pruner, or diverged: user
attribute `diverged`), FAIL (the worker running it died, see below; or the trial was created
after the study was full by two processes asking at once: user attribute `surplus`, nothing
ran). A run that fails (a bad override, an error) stops the process with its message.

A worker killed mid-trial: its trial is marked FAIL and retried (Optuna's
RetryHeartbeatStaleTrialCallback: a new trial with the same parameters, up to --max_retry times),
and the retry resumes the failed trial's workdir from its latest checkpoint. On a database the
dead worker is found by Optuna's heartbeat (--heartbeat_interval, --grace_period). The journal
file has no heartbeat: each worker holds an advisory lock on ROOT/locks/trial_N.lock while it
runs trial N, and any worker (at its start and after each trial) fails the RUNNING trials whose
lock is free (its holder is dead). See docs/tuning.md.
"""

import contextlib
import copy
import json
import math
import os
import shlex
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fisher_jax import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `configs` (a package there) and `experiments`, from any directory.
  sys.path.insert(0, REPO)

PRUNERS = ('fisher', 'median', 'fisher_or_median', 'successive_halving', 'hyperband', 'none')
# The pruners that read Tr(F) (every epoch).
FISHER_PRUNERS = ('fisher', 'fisher_or_median')
SAMPLERS = ('tpe', 'random')
JOURNAL_FILE = 'study.journal'
LOCK_DIR = 'locks'
_LOCK_SETTLE_S = 2.0  # A trial's worker takes its lock within this time of the trial's start.
# Trials that count toward --trials (FAIL ones do not: they are retried or never ran).
_COUNTED = ('COMPLETE', 'PRUNED', 'RUNNING', 'WAITING')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (as for fisher_jax.main).',
                                lock_config=True)
flags.DEFINE_string('space', None, 'Search space: a name in configs/spaces.py.')
flags.DEFINE_string('study', None, 'Study name (created, or joined when it exists).')
flags.DEFINE_integer('trials', None, 'Trials of the study in total (over all its processes).')
flags.DEFINE_string('root', None, "The study's runs: ROOT/trial_NNNN/ (default runs/tune/STUDY).")
flags.DEFINE_string('storage', None, 'Optuna storage: a journal file path (default '
                    'ROOT/study.journal) or a database URL (postgresql://, mysql://, sqlite:///).')
flags.DEFINE_enum('pruner', 'fisher', PRUNERS, 'fisher: FisherExplosionPruner on the early '
                  'Tr(F); median: Optuna\'s MedianPruner on validation accuracy; '
                  'fisher_or_median: either; successive_halving, hyperband: Optuna\'s, on '
                  'validation accuracy; none.')
flags.DEFINE_integer('warmup_epochs', 1, 'No pruning before this many epochs (fisher, median).')
flags.DEFINE_integer('min_trials', 3, 'No pruning before this many trials are complete '
                     '(fisher, median).')
flags.DEFINE_float('fisher_factor', 2.0, 'FisherExplosionPruner: prune above this multiple of '
                   'the good complete trials\' largest early Tr(F).')
flags.DEFINE_float('fisher_top_fraction', 0.5, 'FisherExplosionPruner: the best share of the '
                   'complete trials that count as good.')
flags.DEFINE_enum('fisher_definition', 'window', ('window', 'v1'), 'FisherExplosionPruner: the '
                  'early Tr(F): window (mean over epochs (1, 7] so far) or v1 (max from step 0 '
                  'until train accuracy 0.8, the old benchmark\'s).')
flags.DEFINE_integer('min_resource', 1, 'successive_halving, hyperband: the epoch of the first '
                     'rung.')
flags.DEFINE_integer('reduction_factor', 3, 'successive_halving, hyperband: each rung keeps '
                     'the best 1/reduction_factor (rungs at min_resource * factor^k epochs).')
flags.DEFINE_enum('sampler', 'tpe', SAMPLERS, 'Optuna sampler.')
flags.DEFINE_integer('seed', None, "The sampler's seed (give each process its own, or none).")
flags.DEFINE_integer('max_retry', 3, 'Times a trial whose worker died is retried.')
flags.DEFINE_integer('heartbeat_interval', 10, 'Database storages: seconds between heartbeats.')
flags.DEFINE_integer('grace_period', 60, 'Seconds without a heartbeat (database) or without a '
                     'lock file (journal) after which a running trial counts as abandoned.')
flags.DEFINE_bool('verbose', False, "Show the runs' own log lines.")


class TrialError(Exception):
  """A trial's run failed (bad config, error): the search stops with its message."""


class _Surplus(Exception):
  """The trial was created after the study was full; it runs nothing."""


def default_root(study: str) -> str:
  return os.path.join('runs', 'tune', study)


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 60,
                 max_retry: int = 3):
  """The Optuna storage of `url`: a database URL (with heartbeat) or a journal file path."""
  import optuna  # pylint: disable=g-import-not-at-top
  retry = _retry_callback(max_retry)
  if '://' in url:
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period,
                                      heartbeat_stale_trial_callback=retry)
  os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
  return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def _retry_callback(max_retry: int):
  import optuna  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def make_pruner(name: str, *, warmup_epochs: int = 1, min_trials: int = 3,
                fisher_factor: float = 2.0, fisher_top_fraction: float = 0.5,
                fisher_definition: str = 'window', min_resource: int = 1,
                reduction_factor: int = 3, max_resource: Union[int, str] = 'auto'):
  """The pruner called `name` (see PRUNERS).

  * 'fisher': `pruners.FisherExplosionPruner` (factor, top_fraction, definition of the early
    Tr(F)), 'median': Optuna's `MedianPruner`, 'fisher_or_median': `pruners.
    FisherOrMedianPruner` (either); the three share `warmup_epochs` (no pruning at a smaller
    epoch) and `min_trials` (no pruning before that many trials are COMPLETE).
  * 'successive_halving': Optuna's (asynchronous) `SuccessiveHalvingPruner`: at the rungs,
    epochs min_resource * reduction_factor^k, a trial goes on only if its reported objective is
    among the best 1/reduction_factor of those reported at that rung so far. The defaults
    (1, 3) put rungs at epochs 1, 3 and 9 of a 15-epoch trial; Optuna's own (min_resource
    'auto' = 1 for fewer than 200 epochs, reduction factor 4) would leave only epochs 1 and 4.
  * 'hyperband': Optuna's `HyperbandPruner`: successive halving in floor(log_rf(max_resource /
    min_resource)) + 1 brackets (3 for 15 epochs: first rungs at epochs 1, 3 and 9), a trial's
    bracket a hash of (study name, trial number). `max_resource`: the trials' epochs
    (experiments.tune passes config.num_epochs); 'auto': the last epoch of the first COMPLETE
    trial.
  * 'none': Optuna's `NopPruner`.

  Raises:
    ValueError: an unknown name or a setting out of range.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  if name in ('fisher', 'fisher_or_median'):
    from fisher_jax import pruners  # pylint: disable=g-import-not-at-top
    cls = (pruners.FisherExplosionPruner if name == 'fisher' else pruners.FisherOrMedianPruner)
    return cls(factor=fisher_factor, warmup_epochs=warmup_epochs,
               min_completed_trials=min_trials, top_fraction=fisher_top_fraction,
               early_fisher=fisher_definition)
  if name == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=min_trials, n_warmup_steps=warmup_epochs)
  if name in ('successive_halving', 'hyperband'):
    if min_resource < 1 or reduction_factor < 2:
      raise ValueError(f'--min_resource={min_resource} must be >= 1 and --reduction_factor='
                       f'{reduction_factor} >= 2 (the rungs of {name}).')
    if name == 'successive_halving':
      return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                    reduction_factor=reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                          reduction_factor=reduction_factor)
  if name == 'none':
    return optuna.pruners.NopPruner()
  raise ValueError(f'--pruner={name!r} is unknown; choose one of {list(PRUNERS)}.')


def make_sampler(name: str, seed: Optional[int]):
  import optuna  # pylint: disable=g-import-not-at-top
  if name == 'tpe':
    return optuna.samplers.TPESampler(seed=seed)
  if name == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  raise ValueError(f'--sampler={name!r} is unknown; choose one of {list(SAMPLERS)}.')


def with_overrides(config, overrides: Dict[str, Any], what: str = 'the search space'):
  """A copy of `config` with dotted `overrides` set (type-checked by ml_collections).

  Raises:
    ValueError: an override names a field the config does not define, or has the wrong type.
  """
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    *parents, leaf = field.split('.')
    node = config
    for key in parents + [leaf]:
      if not hasattr(node, 'keys') or key not in node:
        raise ValueError(f'{what} sets {field!r}, a field the config does not define; '
                         'remove it from the space or use a config that has it.')
      if key != leaf:
        node = node[key]
    try:
      node[leaf] = value
    except (TypeError, ValueError) as error:
      raise ValueError(f'{what} sets {field!r} to {value!r}: {error}') from error
  return config


# --- Abandoned trials on the journal file (no heartbeat there). -------------------------------


def _lock_path(root: str, number: int) -> str:
  return os.path.join(root, LOCK_DIR, f'trial_{number}.lock')


@contextlib.contextmanager
def _try_lock(path: str):
  """Yields whether this process got the exclusive advisory lock on `path` (released after)."""
  import filelock  # pylint: disable=g-import-not-at-top
  lock = rundir.file_lock(path)
  try:
    lock.acquire(blocking=False)
  except filelock.Timeout:
    yield False
    return
  try:
    yield True
  finally:
    lock.release()


class _TrialLock:
  """The lock a worker holds on ROOT/locks/trial_N.lock while it runs trial N."""

  def __init__(self, root: str):
    self._root = root
    self._lock = None

  def acquire(self, number: int):
    self.release()
    os.makedirs(os.path.join(self._root, LOCK_DIR), exist_ok=True)
    self._lock = rundir.file_lock(_lock_path(self._root, number))
    # Blocking: a worker checking for abandoned trials holds it for a moment at most.
    self._lock.acquire()

  def release(self):
    if self._lock is not None:
      self._lock.release()  # Closes the file, which drops the lock.
      self._lock = None


def fail_abandoned_trials(study, root: str, grace_period: float, max_retry: int) -> List[int]:
  """Fails the study's RUNNING trials whose worker died, and enqueues their retries.

  A trial is abandoned when its lock file exists and no process holds its lock, or when it
  has run for more than `grace_period` seconds without a lock file (its worker died before it
  took the lock). A trial younger than `_LOCK_SETTLE_S` is never judged (its worker may be
  between creating the lock file and locking it). For the journal storage; databases have
  Optuna's heartbeat.

  Returns:
    The numbers of the trials failed here (another worker may fail some first).
  """
  import optuna  # pylint: disable=g-import-not-at-top
  failed = []
  retry = _retry_callback(max_retry)
  now = time.time()
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    path = _lock_path(root, trial.number)
    age = now - (trial.datetime_start.timestamp() if trial.datetime_start else now)
    if age < _LOCK_SETTLE_S:
      continue
    if os.path.exists(path):
      with _try_lock(path) as free:
        abandoned = free
    else:
      abandoned = age > grace_period
    if not abandoned:
      continue
    try:
      study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
      continue  # Finished meanwhile, or failed by another worker.
    failed.append(trial.number)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      retry(study, study.get_trials(deepcopy=False)[trial.number])
  return failed


# --- Trials. --------------------------------------------------------------------------------------


def report_epochs(trial, frame, config: Optional[Dict[str, Any]], reported: Set[int]):
  """What a trial tells Optuna after an epoch: its curves so far and its new validation scores.

  Stores the curves (`pruners.record_metrics`: the user attributes `metrics` and `config`) and
  calls `trial.report(val/accuracy, epoch)` for every integral epoch of `frame` with a
  validation accuracy that is not in `reported` yet (then adds it there). The live search
  (`_EpochReporter`) and the replay benchmark (benchmarks/pruning.py) both report this way.

  Args:
    trial: the running trial.
    frame: the run's metrics so far (`analysis.read_metrics`).
    config: the run's resolved config (nested dicts), or None.
    reported: the epochs reported before (updated in place).
  """
  from fisher_jax import pruners  # pylint: disable=g-import-not-at-top
  pruners.record_metrics(trial, frame, config)
  if 'val/accuracy' not in frame:
    return
  for epoch, value in zip(frame['epoch'].to_numpy(float), frame['val/accuracy'].to_numpy(float)):
    if value == value and float(epoch).is_integer() and int(epoch) not in reported:  # Not NaN.
      trial.report(float(value), int(epoch))
      reported.add(int(epoch))


class _EpochReporter:
  """The `on_epoch` of a trial's run: reports each new epoch from metrics.jsonl, asks to prune."""

  def __init__(self, trial, workdir: str, config: Dict[str, Any]):
    self._trial = trial
    self._workdir = workdir
    self._config = config
    self._reported: Set[int] = set()
    self.pruned_at: Optional[int] = None
    self.trained: List[int] = []  # The epochs trained by this attempt.

  def report(self):
    """Stores the curves and reports the validation accuracy of the epochs not reported yet."""
    from fisher_jax import analysis  # pylint: disable=g-import-not-at-top
    frame = analysis.read_metrics(self._workdir)
    report_epochs(self._trial, frame, self._config, self._reported)
    return frame

  def __call__(self, epoch: int) -> bool:
    self.trained.append(epoch)
    self.report()
    if self._trial.should_prune():
      self.pruned_at = epoch
      return True
    return False


def best_epoch(frame) -> Dict[str, float]:
  """The epoch of the best validation accuracy (the first if tied) and the metrics there."""
  if 'val/accuracy' not in frame or frame['val/accuracy'].isna().all():
    return {}
  rows = frame.dropna(subset=['val/accuracy']).reset_index(drop=True)
  row = rows.iloc[int(rows['val/accuracy'].to_numpy().argmax())]
  out = {'best_val_epoch': float(row['epoch']), 'val_accuracy': float(row['val/accuracy'])}
  if 'test/accuracy' in rows and not math.isnan(row['test/accuracy']):
    out['test_accuracy'] = float(row['test/accuracy'])
  return out


class Worker:
  """One process's part of a study: the objective and the callbacks around it.

  Args:
    base_config: CONFIG with the command-line overrides.
    space: configs/spaces.py function: trial -> overrides.
    root: the study's run directory.
    trials: the study's budget of trials.
    command: the `python -m fisher_jax.main ...` words before the space's overrides (to show
      how to resume a trial's run by hand).
    journal: whether the storage is the journal file (lock-based recovery of dead workers).
    grace_period, max_retry: see the flags.
    log: where one line per finished trial goes.
    train_fn: `(config, workdir, on_epoch=...) -> metrics` that runs a trial (None:
      `fisher_jax.training.loop.train_and_evaluate`); it calls `on_epoch(epoch)` after each epoch's
      records are in WORKDIR/metrics.jsonl and stops when it returns True (tests give one that
      writes prepared curves).
  """

  def __init__(self, base_config, space: Callable, root: str, trials: int, *,
               command: Sequence[str] = (), journal: bool = True, grace_period: float = 60,
               max_retry: int = 3, log: Callable[[str], None] = print,
               train_fn: Optional[Callable[..., Any]] = None):
    self._base = base_config
    self._space = space
    self._root = root
    self._trials = trials
    self._command = list(command)
    self._journal = journal
    self._grace = grace_period
    self._max_retry = max_retry
    self._log = log
    self._train_fn = train_fn
    self._lock = _TrialLock(root)

  def recover(self, study) -> List[int]:
    if not self._journal:
      return []
    failed = fail_abandoned_trials(study, self._root, self._grace, self._max_retry)
    for number in failed:
      self._log(f'trial {number}: its worker died; failed it and queued a retry')
    return failed

  def objective(self, trial) -> float:
    import optuna  # pylint: disable=g-import-not-at-top
    from fisher_jax.training import guard  # pylint: disable=g-import-not-at-top
    train_fn = self._train_fn
    if train_fn is None:
      from fisher_jax.training import loop  # pylint: disable=g-import-not-at-top
      train_fn = loop.train_and_evaluate
    study = trial.study
    ahead = [t for t in study.get_trials(deepcopy=False)
             if t.number < trial.number and t.state.name in _COUNTED]
    if len(ahead) >= self._trials:
      trial.set_user_attr('surplus', True)
      study.stop()
      raise _Surplus(f'trial {trial.number} came after the study was full')
    self._lock.acquire(trial.number)
    overrides = self._space(trial)
    config = with_overrides(self._base, overrides, f'--space (trial {trial.number})')
    workdir = trial.user_attrs.get('workdir') or os.path.join(self._root,
                                                              f'trial_{trial.number:04d}')
    trial.set_user_attr('workdir', workdir)
    trial.set_user_attr('worker', f'{socket.gethostname()}:{os.getpid()}')
    trial.set_user_attr('command', shlex.join(self._command + ['--workdir', workdir] + [
        f'--config.{k}={v}' for k, v in overrides.items()]))
    reporter = _EpochReporter(trial, workdir, json.loads(config.to_json()))
    start = time.monotonic()
    diverged = None
    try:
      train_fn(config, workdir, on_epoch=reporter)
    except guard.DivergedError as error:  # A result: this setting diverges.
      diverged = error
    except (ValueError, rundir.WorkdirBusyError) as error:
      raise TrialError(f'trial {trial.number} ({workdir}): {error}') from error
    frame = reporter.report()
    last = float(frame['epoch'].max()) if len(frame) else 0.0
    trial.set_user_attr('epochs', last)
    # Epochs done before this attempt (> 0: it resumed a checkpoint, e.g. a retried trial).
    trial.set_user_attr('start_epoch', min(reporter.trained) - 1 if reporter.trained else last)
    trial.set_user_attr('wall_s', round(time.monotonic() - start, 2))
    for key, value in best_epoch(frame).items():
      trial.set_user_attr(key, value)
    if diverged is not None:
      trial.set_user_attr('diverged', True)
      trial.set_user_attr('divergence', str(diverged))
      raise optuna.TrialPruned(f'diverged: {diverged}')
    if reporter.pruned_at is not None:
      raise optuna.TrialPruned(f'pruned at epoch {reporter.pruned_at}')
    best = best_epoch(frame)
    if 'val_accuracy' not in best:
      raise TrialError(f'trial {trial.number} ({workdir}) logged no val/accuracy; the config '
                       'needs a validation split (dataset.val_fraction > 0).')
    return best['val_accuracy']

  def after_trial(self, study, trial):
    """Callback after each trial: releases its lock, reports it, recovers dead workers, and
    stops this process once the study is full with no queued (WAITING) trial left."""
    self._lock.release()
    if not trial.user_attrs.get('surplus'):
      self._log(describe_trial(trial))
    self.recover(study)
    if study_is_full(study, self._trials):
      study.stop()


def describe_trial(trial) -> str:
  """One line: number, state, validation and test accuracy, epochs, parameters."""
  attrs = trial.user_attrs
  parts = [f'trial {trial.number:3d} {trial.state.name.lower():8s}']
  if 'val_accuracy' in attrs:
    parts.append(f"val {attrs['val_accuracy']:.4f} (epoch {attrs['best_val_epoch']:g})")
  if 'test_accuracy' in attrs:
    parts.append(f"test {attrs['test_accuracy']:.4f}")
  if 'epochs' in attrs:
    parts.append(f"{attrs['epochs']:g} epochs {attrs.get('wall_s', 0):.0f} s")
  parts.append(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in trial.params.items()))
  return ' | '.join(parts)


def summarize(study) -> Dict[str, Any]:
  """The study's result: trials by state, epochs and seconds spent, the best trial.

  Epochs spent count every workdir once (a retried trial resumes its original's workdir): the
  last epoch each reached. The best trial is the COMPLETE one with the highest objective (the
  best validation accuracy); `test_accuracy` is its test accuracy at that epoch.
  """
  trials = study.get_trials(deepcopy=False)
  states: Dict[str, int] = {}
  for t in trials:
    states[t.state.name] = states.get(t.state.name, 0) + 1
  by_workdir: Dict[str, Any] = {}
  for t in trials:
    if 'epochs' in t.user_attrs:
      by_workdir[t.user_attrs['workdir']] = t
  out = {'trials': states,
         'epochs': sum(t.user_attrs['epochs'] for t in by_workdir.values()),
         'train_s': round(sum(t.user_attrs.get('wall_s', 0.0) for t in trials), 1),
         'diverged': sum(bool(t.user_attrs.get('diverged')) for t in trials)}
  complete = [t for t in trials if t.state.name == 'COMPLETE']
  if complete:
    best = max(complete, key=lambda t: t.value)
    out['best'] = {'number': best.number, 'val_accuracy': best.value,
                   'best_val_epoch': best.user_attrs.get('best_val_epoch'),
                   'test_accuracy': best.user_attrs.get('test_accuracy'),
                   'params': best.params, 'workdir': best.user_attrs.get('workdir')}
  return out


def study_is_full(study, trials: int) -> bool:
  """Whether `study` holds `trials` counted trials and none is queued (WAITING) to run."""
  states = [t.state.name for t in study.get_trials(deepcopy=False)]
  return sum(s in _COUNTED for s in states) >= trials and 'WAITING' not in states


def run_worker(study, worker: Worker, trials: int):
  """Runs trials of `study` in this process until it is full (`study_is_full`)."""
  worker.recover(study)
  if not study_is_full(study, trials):
    study.optimize(worker.objective, catch=(_Surplus,), callbacks=[worker.after_trial])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in ('space', 'study', 'trials'):
    if getattr(FLAGS, name) is None:
      sys.exit(f'tune: --{name} is required.')
  if FLAGS.trials < 1:
    sys.exit(f'tune: --trials={FLAGS.trials} must be at least 1.')
  from configs import spaces  # pylint: disable=g-import-not-at-top
  from experiments import run as runner  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(FLAGS.root or default_root(FLAGS.study))
  # A persistent compilation cache shared by the study's trials (they compile the same steps).
  os.environ.update(runner.run_environment(root, workers=1))
  from fisher_jax import _extras  # pylint: disable=g-import-not-at-top
  try:
    _extras.require('tune', 'python -m experiments.tune')
  except ImportError as error:
    sys.exit(f'tune: {error}')
  import optuna  # pylint: disable=g-import-not-at-top
  try:
    space = spaces.get_space(FLAGS.space)
    config = FLAGS.config
    pruner = make_pruner(FLAGS.pruner, warmup_epochs=FLAGS.warmup_epochs,
                         min_trials=FLAGS.min_trials, fisher_factor=FLAGS.fisher_factor,
                         fisher_top_fraction=FLAGS.fisher_top_fraction,
                         fisher_definition=FLAGS.fisher_definition,
                         min_resource=FLAGS.min_resource,
                         reduction_factor=FLAGS.reduction_factor,
                         max_resource=int(config.num_epochs))
    if FLAGS.pruner in FISHER_PRUNERS and not config.measure.every_epochs:
      raise ValueError(f'--pruner={FLAGS.pruner} reads Tr(F) every epoch: keep '
                       'config.measure.every_epochs at 1 or choose --pruner=median or none.')
  except ValueError as error:
    sys.exit(f'tune: {error}')
  if not FLAGS.verbose:
    logging.set_verbosity(logging.WARNING)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage_url = FLAGS.storage or os.path.join(root, JOURNAL_FILE)
  storage = make_storage(storage_url, heartbeat_interval=FLAGS.heartbeat_interval,
                         grace_period=FLAGS.grace_period, max_retry=FLAGS.max_retry)
  study = optuna.create_study(storage=storage, study_name=FLAGS.study, direction='maximize',
                              sampler=make_sampler(FLAGS.sampler, FLAGS.seed), pruner=pruner,
                              load_if_exists=True)
  command = ['python', '-m', 'fisher_jax.main', '--config',
             config_flags.get_config_filename(FLAGS['config'])] + [
                 f'--config.{k}={v}' for k, v in
                 config_flags.get_override_values(FLAGS['config']).items()]
  worker = Worker(config, space, root, FLAGS.trials, command=command,
                  journal='://' not in storage_url, grace_period=FLAGS.grace_period,
                  max_retry=FLAGS.max_retry)
  # Ctrl-C ends the process as SIGTERM and SIGKILL do, leaving its trial RUNNING with its lock
  # free, to be failed and retried into its checkpoint (Optuna would mark it FAIL, unretried).
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  start = time.monotonic()
  try:
    run_worker(study, worker, FLAGS.trials)
  except TrialError as error:
    sys.exit(f'tune: {error}')
  summary = summarize(study)
  print(f'study {FLAGS.study}: ' + ', '.join(f'{n} {s.lower()}' for s, n in
                                             sorted(summary['trials'].items())) +
        f"; {summary['epochs']:g} epochs; this process {time.monotonic() - start:.0f} s")
  if 'best' in summary:
    best = summary['best']
    print(f"best: trial {best['number']} val {best['val_accuracy']:.4f} at epoch "
          f"{best['best_val_epoch']:g}, test {best['test_accuracy']:.4f} there, "
          f"{best['params']} ({best['workdir']})")


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
