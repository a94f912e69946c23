"""`train_and_evaluate(config, workdir)`: the training loop of every fisher_jax experiment.

It builds the parts from the config (data, model, optimizer with the penalty, state), resumes
from the latest checkpoint in `workdir` when there is one, and runs the loop: data-parallel
training steps, evaluation on val/test, curvature measurements on fixed training subsets,
logging (TensorBoard, console, metrics.jsonl) and checkpoints. See docs/design.md for the workdir
layout and the metric names.

The config is validated once, first (`settings.read`); each part receives its own settings.
"""

import contextlib
import json
import os
from typing import Any, Callable, Dict, FrozenSet, Optional

from fisher_jax import _extras

_extras.require('train', __name__)

from absl import logging
from clu import periodic_actions
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from fisher_jax import data
from fisher_jax import models
from fisher_jax import rundir
from fisher_jax.training import cadence
from fisher_jax.training import checkpoint
from fisher_jax.training import config_files
from fisher_jax.training import console
from fisher_jax.training import fit_stop
from fisher_jax.training import guard
from fisher_jax.training import mesh as mesh_lib
from fisher_jax.training import optim
from fisher_jax.training import settings as settings_lib
from fisher_jax.training import state as state_lib
from fisher_jax.training import steps
from fisher_jax.training import writers

# Keys that may change when a run is resumed: they do not alter the trajectory (num_epochs only
# where the learning-rate schedule does not depend on it, see _check_workdir).
RESUMABLE_FIELDS = ('checkpoint_every_epochs', 'log_every_steps', 'checkpoint_keep',
                    'guard.nonfinite', 'num_epochs')


def _config_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  return json.loads(config.to_json())


def _check_subset_sizes(settings: settings_lib.Settings, num_train: int):
  """The fixed measurement subsets in use must fit in the training set (never silently cut)."""
  m = settings.measure
  used = {'num_examples': m.every_epochs or m.every_steps or settings.dataset.label_noise > 0,
          'hessian_num_examples': m.hessian_every_epochs}
  for field in (f for f, is_used in used.items() if is_used):
    value = getattr(m, field)
    if value > num_train:
      raise ValueError(f'measure.{field}={value} is larger than the training set '
                       f'({num_train} examples); choose at most {num_train}.')


def _check_workdir(workdir: str, config: ml_collections.ConfigDict):
  """Refuses to touch a workdir that holds another run. Writes nothing.

  Raises:
    ValueError: the workdir's config.json differs from `config` (naming the fields), or the
      workdir holds checkpoints without a config.json (not written by fisher_jax).
  """
  path = os.path.join(workdir, rundir.CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, rundir.CHECKPOINT_DIR)):
      raise ValueError(f'workdir {workdir!r} holds checkpoints but no {rundir.CONFIG_FILE}; it '
                       'was not written by fisher_jax: choose another --workdir.')
    return
  with open(path) as f:
    old = config_files.flat_fields(json.load(f))
  new = config_files.flat_fields(_config_dict(config))
  differing = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_FIELDS)
  if differing:
    details = ', '.join(f'{k} ({old.get(k)!r} there, {new.get(k)!r} now)' for k in differing)
    raise ValueError(f'workdir {workdir!r} holds a run with a different config: {details}; '
                     'choose another --workdir or rerun with the same config to resume.')
  if old.get('num_epochs') != new['num_epochs'] and old.get('optimizer.schedule') == 'cosine':
    raise ValueError(f"num_epochs={new['num_epochs']} differs from the {old['num_epochs']} of "
                     f"the run in workdir {workdir!r}, whose optimizer.schedule='cosine' ends "
                     'there, so its past steps would change; choose another --workdir '
                     '(init_from can start it from this run).')


def _write_config(workdir: str, config: ml_collections.ConfigDict):
  # Written whole, then renamed: other processes checking the workdir never see half a file.
  rundir.write_json(os.path.join(workdir, rundir.CONFIG_FILE), _config_dict(config), indent=2,
                    sort_keys=True)


def _place_subset(subset: Dict[str, np.ndarray], mesh) -> Dict[str, jax.Array]:
  """Puts a fixed measurement subset on the devices: split over them if it divides, else whole."""
  n = len(subset['label'])
  sharding = mesh_lib.batch_sharded(mesh) if n % mesh.size == 0 else mesh_lib.replicated(mesh)
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in subset.items()}


def _evaluate(eval_step, state, inp, split: str, batch_size: int, mesh) -> Dict[str, float]:
  """'<split>/loss' and '<split>/accuracy' over every example of `split` (sums / true count)."""
  sums = None
  for batch in inp.eval_iterator(split, batch_size):
    out = eval_step(state, mesh_lib.shard_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = float(sums['count'])
  return {f'{split}/loss': float(sums['loss']) / count,
          f'{split}/accuracy': float(sums['accuracy']) / count}


class _Measurements:
  """The loop's curvature measurements on fixed training subsets, as configured in `measure.*`."""

  def __init__(self, measure: settings_lib.MeasureSettings, *, batch_size: int,
               label_noise: float, model, inp, mesh, rng):
    self._rng = rng
    self._subset = _place_subset(inp.fixed_subset(measure.num_examples, kind='all'), mesh)
    self._measure = jax.jit(steps.make_measure_fn(model, estimator=measure.fisher_estimator,
                                                  batch_size=batch_size,
                                                  per_leaf=measure.per_leaf))
    self._hessian = self._eigen = None
    if measure.hessian_every_epochs or measure.eigen_every_epochs:
      self._hessian_subset = _place_subset(
          inp.fixed_subset(measure.hessian_num_examples, kind='all'), mesh)
    if measure.hessian_every_epochs:
      self._hessian = jax.jit(steps.make_hessian_fn(model, num_probes=measure.hessian_probes))
    if measure.eigen_every_epochs:
      self._eigen = jax.jit(steps.make_eigen_fn(model, k=measure.eigen_k,
                                                num_iterations=measure.eigen_iterations))
    self._noisy = {}
    if label_noise > 0:
      self._noisy = {kind: _place_subset(inp.fixed_subset(measure.num_examples, kind=kind), mesh)
                     for kind in ('clean', 'noisy')}
      self._subset_metrics = jax.jit(steps.make_subset_metrics_fn(model))

  def fisher(self, state) -> Dict[str, jax.Array]:
    rng = jax.random.fold_in(self._rng, state.step)
    out = dict(self._measure(state, self._subset['image'], self._subset['label'], rng))
    for kind, subset in self._noisy.items():
      acc, grad_norm = self._subset_metrics(state, subset['image'], subset['label'])
      out[f'train_{kind}/accuracy'] = acc
      out[f'train_{kind}/grad_norm'] = grad_norm
    return out

  def hessian(self, state) -> Dict[str, jax.Array]:
    rng = jax.random.fold_in(jax.random.fold_in(self._rng, state.step), 1)
    return self._hessian(state, self._hessian_subset['image'], self._hessian_subset['label'],
                         rng)

  def eigen(self, state) -> Dict[str, jax.Array]:
    rng = jax.random.fold_in(jax.random.fold_in(self._rng, state.step), 2)
    return self._eigen(state, self._hessian_subset['image'], self._hessian_subset['label'], rng)


def _due(settings: settings_lib.Settings, step: int, steps_per_epoch: int,
         converged_at: Optional[int] = None) -> FrozenSet[str]:
  """What is due after `step` updates: 'epoch_end', 'log', 'fisher', 'hessian', 'eigen',
  'eval', 'checkpoint', 'fit' (the whole-training-set evaluation of a fit target) and 'end'.

  Train metrics are logged at epoch ends and every `log_every_steps`; Tr(F) every
  `measure.every_steps` (up to epoch `measure.every_steps_until_epoch` when that is > 0) and
  every `measure.every_epochs` epochs; Tr(H) every
  `measure.hessian_every_epochs` epochs and the top eigenvalues every `measure.eigen_every_epochs`;
  evaluation and checkpoints every `eval_every_epochs` / `checkpoint_every_epochs` epochs. Each
  epoch cadence that is on also fires at the last step; evaluation and checkpoints fire there
  even when off. With a fit target (`stop.train_accuracy > 0`) the training set is evaluated
  ('fit') at every epoch end; once the run has converged (`converged_at`, its convergence
  epoch), evaluation and the Tr(H) and eigenvalue measurements that are on are due at every
  epoch end, and the last step is that of epoch `converged_at + stop.extra_epochs`.
  """
  epoch, in_epoch = divmod(step, steps_per_epoch)
  end = fit_stop.end_epoch(converged_at, settings.stop.extra_epochs, settings.num_epochs)
  epoch_end, last = in_epoch == 0, step == end * steps_per_epoch
  converged = epoch_end and converged_at is not None and epoch >= converged_at
  m = settings.measure
  by_epoch = lambda every, always_last: epoch_end and cadence.is_due(  # noqa: E731
      epoch, every, last=last and (always_last or every > 0))
  until = m.every_steps_until_epoch
  in_epochs = m.every_steps and (not until or step <= until * steps_per_epoch)
  due = {'epoch_end': epoch_end,
         'log': epoch_end or cadence.is_due(step, settings.log_every_steps),
         'fisher': (in_epochs and cadence.is_due(step, m.every_steps))
                   or by_epoch(m.every_epochs, False),
         'hessian': by_epoch(m.hessian_every_epochs, False) or (
             converged and m.hessian_every_epochs > 0),
         'eigen': by_epoch(m.eigen_every_epochs, False) or (
             converged and m.eigen_every_epochs > 0),
         'eval': by_epoch(settings.eval_every_epochs, True) or converged,
         'checkpoint': by_epoch(settings.checkpoint_every_epochs, True),
         'fit': epoch_end and settings.stop.train_accuracy > 0,
         'end': last}
  return frozenset(k for k, v in due.items() if v)


def _init_from(state, init_from, mesh):
  """Starts from the parameters and BatchNorm statistics of another run's checkpoint.

  The optimizer state, the step counter and the RNG are this run's own (fresh), so a run can
  continue another one with a different optimizer, regularizer or seed.
  """
  source = os.path.join(init_from.workdir, rundir.CHECKPOINT_DIR)
  step, params, batch_stats = checkpoint.restore_model_variables(source, init_from.step)
  ours = jax.tree.structure((state.params, state.batch_stats))
  if jax.tree.structure((params, batch_stats)) != ours or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves((params, batch_stats)),
                                                 jax.tree.leaves((state.params,
                                                                  state.batch_stats)))):
    raise ValueError(f'init_from.workdir={init_from.workdir!r} holds a different model; '
                     'its model config must equal this run\'s model config.')
  logging.info('Initialized from %s at step %d.', source, step)
  placed = mesh_lib.replicate((params, batch_stats), mesh)
  return state.replace(params=placed[0], batch_stats=placed[1])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_epoch: Optional[Callable[[int], bool]] = None) -> Dict[str, float]:
  """Trains and evaluates the model of `config`, logging to and checkpointing in `workdir`.

  Starting again with the same config and workdir resumes from the latest checkpoint (optimizer
  state, RNG and data order included) and ends with the same numbers as an uninterrupted run.

  Args:
    config: the experiment config (see configs/default.py for the fields).
    workdir: the run's directory: config.json, metrics.jsonl, TensorBoard events, checkpoints/.
    on_epoch: called with the epoch number after each epoch's metrics are in metrics.jsonl and
      its checkpoint (if due) is saved; returning True ends the run there, resumable like any
      run (a hyperparameter search stopping a trial: experiments/tune.py).

  Returns:
    The last logged value of every metric.

  Raises:
    ValueError: a config field is unknown or impossible, the workdir holds another run, is a
      file or cannot be written, or none of its checkpoints can be read.
    workdir.WorkdirBusyError: another process holds the workdir (one run per workdir).
    guard.DivergedError: a training loss or penalty became non-finite (guard.nonfinite='stop');
      `<workdir>/diverged.json` records where, and the finite checkpoints are kept.
  """
  # Released in reverse order on the way out, whatever happens: pending checkpoint saves are
  # finished, the writers closed, then the workdir's lock released.
  with contextlib.ExitStack() as cleanup:
    lock = cleanup.enter_context(rundir.WorkdirLock(workdir))
    try:
      return _train_and_evaluate(config, workdir, lock, cleanup, on_epoch)
    except guard.DivergedError as error:
      if jax.process_index() == 0:
        guard.write_divergence(workdir, error)
      raise


def _train_and_evaluate(config, workdir, lock, cleanup, on_epoch) -> Dict[str, float]:
  """`train_and_evaluate`'s work: takes `lock` before writing, registers closing in `cleanup`."""
  settings = settings_lib.read(config)
  rundir.check(workdir)
  _check_workdir(workdir, config)
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_divisible(settings.batch_size, mesh)
  inp = data.make_input(settings.dataset, batch_size=settings.batch_size, seed=settings.seed)
  model = models.get_model(settings.model.name, inp.spec.num_classes, **settings.model.kwargs)
  _check_subset_sizes(settings, inp.num_train)
  # Before the workdir is touched, like every other check of the config.
  if settings.stop.train_accuracy > 0 and not inp.has_split(data.TRAIN_EVAL_SPLIT):
    raise ValueError(f'stop.train_accuracy={settings.stop.train_accuracy} needs the whole training '
                     f'set in memory, which dataset {settings.dataset.name!r} is not; set '
                     'stop.train_accuracy=0.')
  steps_per_epoch = inp.steps_per_epoch
  tx = optim.make_optimizer(settings.optimizer, settings.regularizer, steps_per_epoch=steps_per_epoch,
                            num_epochs=settings.num_epochs)
  last_step = settings.num_epochs * steps_per_epoch
  is_writer = jax.process_index() == 0

  rng = jax.random.PRNGKey(settings.seed)
  init_rng, measure_rng = jax.random.split(rng)
  create = jax.jit(
      lambda r: state_lib.create_train_state(model, tx, inp.spec.image_shape, r),
      out_shardings=mesh_lib.replicated(mesh))
  state = create(init_rng)
  # Read (and check) another run's checkpoint before this run writes anything.
  initial = _init_from(state, settings.init_from, mesh) if settings.init_from.workdir else None

  # Nothing is written before the lock: a second process on this workdir stops here.
  lock.acquire(process_index=jax.process_index(), process_count=jax.process_count(),
               broadcast=lambda v: int(multihost_utils.broadcast_one_to_all(np.int32(v))))
  divergence = guard.read_divergence(workdir)
  if divergence and settings.guard_nonfinite == 'stop':
    raise guard.DivergedError(divergence)  # Training it again would diverge again.
  if is_writer and not os.path.exists(os.path.join(workdir, rundir.CONFIG_FILE)):
    # Before checkpoints/ is made: a start killed in between leaves a workdir that is ours.
    _write_config(workdir, config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, rundir.CHECKPOINT_DIR),
                                 keep=settings.checkpoint_keep,
                                 best_metric='val/accuracy' if inp.has_split('val') else None,
                                 damaged_dir=os.path.join(workdir, rundir.DAMAGED_CHECKPOINT_DIR))
  cleanup.callback(ckpt.close)
  start_step, restored = ckpt.restore_latest(state)
  if start_step > last_step:
    done = start_step // steps_per_epoch
    raise ValueError(f'num_epochs={settings.num_epochs} is below the {done} epochs the run in '
                     f'workdir {workdir!r} has done; pass --config.num_epochs={done} or more to '
                     'continue it.')
  if is_writer:  # A resumed run's too: a resumable field (num_epochs) may have changed.
    _write_config(workdir, config)
  screen = console.Console(num_epochs=settings.num_epochs, steps_per_epoch=steps_per_epoch,
                           start_step=start_step, enabled=is_writer)
  if start_step:
    state = restored
    screen.note(f'Resumed from the checkpoint at step {start_step} '
                f'(epoch {start_step // steps_per_epoch}).')
  elif initial is not None:
    state = initial
  if is_writer:  # Drops what was logged after the checkpoint (all of it from scratch).
    rundir.prepare_for_resume(workdir, start_step or None)
  converged_at, done_before = None, {}
  if start_step and settings.stop.train_accuracy > 0:  # The fit target's state is in the records.
    records = [r for r in rundir.read_records(workdir) if r['step'] <= start_step]
    converged_at = fit_stop.convergence_epoch(records, settings.stop.train_accuracy)
    for r in records:
      done_before.update({k: v for k, v in r.items() if k not in ('step', 'epoch')})
  stop_step = fit_stop.end_epoch(converged_at, settings.stop.extra_epochs,
                                 settings.num_epochs) * steps_per_epoch

  writer = writers.create_writer(workdir, steps_per_epoch, jax.process_index(), console=screen)
  cleanup.callback(writer.close)
  cleanup.callback(writer.flush)
  learning_rate = optim.make_schedule(settings.optimizer, steps_per_epoch, settings.num_epochs)
  # The host decides which steps compute a fresh penalty (no lax.cond on the device): two
  # compiled steps, each compiled on first use.
  penalty_start = cadence.epochs_to_steps(settings.regularizer.start_epoch, steps_per_epoch)
  train_steps = {
      fresh: mesh_lib.data_parallel(
          steps.make_train_step(model, tx, settings.regularizer.name, fresh_penalty=fresh),
          mesh, batch_args=(1,), num_args=2, donate_argnums=(0,))
      for fresh in (True, False)}
  eval_step = mesh_lib.data_parallel(steps.make_eval_step(model), mesh, batch_args=(1,),
                                     num_args=2)
  measurements = _Measurements(settings.measure, batch_size=settings.batch_size,
                               label_noise=settings.dataset.label_noise, model=model, inp=inp,
                               mesh=mesh, rng=measure_rng)
  eval_splits = [s for s in data.EVAL_SPLITS if inp.has_split(s)]

  screen.note(console.describe_run(settings, inp, state.params, mesh.size))
  screen.note('Compiling the training step (the first steps are slow) ...')
  if start_step == 0:
    writer.write_hparams(config_files.flat_fields(_config_dict(config)))
    if settings.measure.every_epochs or settings.measure.every_steps:
      writer.write_scalars(0, jax.device_get(measurements.fisher(state)))
  # Speed and uptime, as perf/* in TensorBoard (not in metrics.jsonl), from process 0.
  report = periodic_actions.ReportProgress(num_train_steps=last_step, writer=writer.perf,
                                           every_secs=30.0) if is_writer else lambda step: None
  train_sums, train_count = None, 0
  latest: Dict[str, float] = {}
  if start_step >= stop_step:  # It reached its fit target and trained its extra epochs before.
    latest, last_step = done_before, start_step
  iterator = inp.train_iterator(start_step)
  for step in range(start_step + 1, last_step + 1):  # `step` counts updates done after it.
    train_step = train_steps[settings.regularizer.name != 'none' and cadence.penalty_due(
        step - 1, every_k=settings.regularizer.every_k, start_step=penalty_start)]
    state, metrics = train_step(state, mesh_lib.shard_batch(next(iterator), mesh))
    train_sums = metrics if train_sums is None else jax.tree.map(jnp.add, train_sums, metrics)
    train_count += 1
    report(step)
    screen.advance(step)
    due = _due(settings, step, steps_per_epoch, converged_at)
    record: Dict[str, Any] = {}
    if 'fit' in due:
      record.update(_evaluate(eval_step, state, inp, data.TRAIN_EVAL_SPLIT, settings.batch_size,
                              mesh))
      if (converged_at is None
          and record[fit_stop.TRAIN_FULL_ACCURACY] >= settings.stop.train_accuracy):
        converged_at = step // steps_per_epoch
        screen.note(f'Reached the fit target (accuracy {settings.stop.train_accuracy:g} on the '
                    f'whole training set) at epoch {converged_at}; '
                    f'{settings.stop.extra_epochs} more epochs.')
        due = _due(settings, step, steps_per_epoch, converged_at)
    if 'log' in due:
      record.update({f'train/{k}' if k != 'penalty' else 'regularizer/penalty':
                     float(v) / train_count for k, v in jax.device_get(train_sums).items()})
      record['train/learning_rate'] = float(learning_rate(step - 1))  # The latest update's.
      train_sums, train_count = None, 0
      guard.check(record, step, record['train/learning_rate'], settings.guard_nonfinite)
    if 'fisher' in due:
      record.update(measurements.fisher(state))
    if 'hessian' in due:
      record.update(measurements.hessian(state))
    if 'eigen' in due:
      record.update(measurements.eigen(state))
    for split in eval_splits if 'eval' in due else ():
      record.update(_evaluate(eval_step, state, inp, split, settings.batch_size, mesh))
    if record:
      record = {k: float(v) for k, v in jax.device_get(record).items()}
      writer.write_scalars(step, record)
      latest.update(record)
    if 'checkpoint' in due:
      try:
        ckpt.save(step, state, metrics=record)
      except checkpoint.NonFiniteStateError:
        if settings.guard_nonfinite == 'stop':
          raise guard.diverged(step, 'a parameter', 'non-finite',
                               float(learning_rate(step - 1))) from None
        logging.warning('The state at step %d is non-finite: its checkpoint is not saved.', step)
    if on_epoch is not None and 'epoch_end' in due and on_epoch(step // steps_per_epoch):
      break
    if 'end' in due:  # The fit target's last extra epoch (or the budget's last step).
      break

  screen.finish(writers.read_metrics(workdir) if is_writer else [], workdir)
  return latest
