"""`train_and_evaluate(config, workdir)`: the training loop of every fisher_jax experiment.

It builds the parts from the config (data, model, optimizer with the penalty, state), resumes
from the latest checkpoint in `workdir` when there is one, and runs the loop: data-parallel
training steps, evaluation on val/test, curvature measurements on fixed training subsets,
logging (TensorBoard, console, metrics.jsonl) and checkpoints. See docs/design.md for the workdir
layout and the metric names.

The config is validated once, first (`settings.read`); each part receives its own settings.
"""

import json
import os
from typing import Any, Callable, Dict, FrozenSet, Optional

from fisher_jax import _extras

_extras.require('train', __name__)

from absl import logging
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fisher_jax import cadence
from fisher_jax import checkpoint
from fisher_jax import config_files
from fisher_jax import data
from fisher_jax import models
from fisher_jax import optim
from fisher_jax import parallel
from fisher_jax import settings as settings_lib
from fisher_jax import state as state_lib
from fisher_jax import steps
from fisher_jax import writers

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
# Keys that may change when a run is resumed: they do not alter the trajectory.
RESUMABLE_FIELDS = ('checkpoint_every_epochs', 'log_every_steps')


def _config_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  return json.loads(config.to_json())


def _check_workdir(workdir: str, config: ml_collections.ConfigDict):
  """Refuses to touch a workdir that holds another run. Writes nothing.

  Raises:
    ValueError: the workdir's config.json differs from `config` (naming the fields), or the
      workdir holds checkpoints without a config.json (not written by fisher_jax).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
      raise ValueError(f'workdir {workdir!r} holds checkpoints but no {CONFIG_FILE}; it was not '
                       'written by fisher_jax: choose another --workdir.')
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


def _write_config(workdir: str, config: ml_collections.ConfigDict):
  # Written whole, then renamed: other processes checking the workdir never see half a file.
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(_config_dict(config), f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def _place_subset(subset: Dict[str, np.ndarray], mesh) -> Dict[str, jax.Array]:
  """Puts a fixed measurement subset on the devices: split over them if it divides, else whole."""
  n = len(subset['label'])
  sharding = parallel.batch_sharded(mesh) if n % mesh.size == 0 else parallel.replicated(mesh)
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in subset.items()}


def _evaluate(eval_step, state, inp, split: str, batch_size: int, mesh) -> Dict[str, float]:
  sums = None
  for batch in inp.eval_iterator(split, batch_size):
    out = eval_step(state, parallel.shard_batch(batch, mesh))
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
                                                  per_layer=measure.per_layer))
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


def _due(run: settings_lib.Settings, step: int, steps_per_epoch: int) -> FrozenSet[str]:
  """What is due after `step` updates: 'epoch_end', 'log', 'fisher', 'hessian', 'eigen',
  'eval', 'checkpoint'.

  Train metrics are logged at epoch ends and every `log_every_steps`; Tr(F) every
  `measure.every_steps` and every `measure.every_epochs` epochs; Tr(H) every
  `measure.hessian_every_epochs` epochs and the top eigenvalues every `measure.eigen_every_epochs`;
  evaluation and checkpoints every `eval_every_epochs` / `checkpoint_every_epochs` epochs. Each epoch cadence that is on also fires at the last step;
  evaluation and checkpoints fire there even when off.
  """
  epoch, in_epoch = divmod(step, steps_per_epoch)
  epoch_end, last = in_epoch == 0, step == run.num_epochs * steps_per_epoch
  m = run.measure
  by_epoch = lambda every, always_last: epoch_end and cadence.is_due(  # noqa: E731
      epoch, every, last=last and (always_last or every > 0))
  due = {'epoch_end': epoch_end,
         'log': epoch_end or cadence.is_due(step, run.log_every_steps),
         'fisher': cadence.is_due(step, m.every_steps) or by_epoch(m.every_epochs, False),
         'hessian': by_epoch(m.hessian_every_epochs, False),
         'eigen': by_epoch(m.eigen_every_epochs, False),
         'eval': by_epoch(run.eval_every_epochs, True),
         'checkpoint': by_epoch(run.checkpoint_every_epochs, True)}
  return frozenset(k for k, v in due.items() if v)


def _init_from(state, init_from, mesh):
  """Starts from the parameters and BatchNorm statistics of another run's checkpoint.

  The optimizer state, the step counter and the RNG are this run's own (fresh), so a run can
  continue another one with a different optimizer, regularizer or seed.
  """
  source = os.path.join(init_from.workdir, CHECKPOINT_DIR)
  step, params, batch_stats = checkpoint.restore_model_variables(source, init_from.step)
  ours = jax.tree.structure((state.params, state.batch_stats))
  if jax.tree.structure((params, batch_stats)) != ours or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves((params, batch_stats)),
                                                 jax.tree.leaves((state.params,
                                                                  state.batch_stats)))):
    raise ValueError(f'init_from.workdir={init_from.workdir!r} holds a different model; '
                     'its model config must equal this run\'s model config.')
  logging.info('Initialized from %s at step %d.', source, step)
  placed = parallel.replicate((params, batch_stats), mesh)
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
    ValueError: a config field is unknown or impossible, or the workdir holds another run.
  """
  run = settings_lib.read(config)
  _check_workdir(workdir, config)
  mesh = parallel.make_mesh()
  parallel.check_divisible(run.batch_size, mesh)
  inp = data.make_input(run.dataset, batch_size=run.batch_size, seed=run.seed)
  model = models.get_model(run.model.name, inp.spec.num_classes, **run.model.kwargs)
  steps_per_epoch = inp.steps_per_epoch
  tx = optim.make_optimizer(run.optimizer, run.regularizer, steps_per_epoch=steps_per_epoch,
                            num_epochs=run.num_epochs)
  last_step = run.num_epochs * steps_per_epoch
  is_writer = jax.process_index() == 0

  rng = jax.random.PRNGKey(run.seed)
  init_rng, measure_rng = jax.random.split(rng)
  create = jax.jit(
      lambda r: state_lib.create_train_state(model, tx, inp.spec.image_shape, r),
      out_shardings=parallel.replicated(mesh))
  state = create(init_rng)
  # Read (and check) another run's checkpoint before this run writes anything.
  initial = _init_from(state, run.init_from, mesh) if run.init_from.workdir else None

  os.makedirs(workdir, exist_ok=True)
  if is_writer and not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    _write_config(workdir, config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(start_step, state)
    logging.info('Resumed from the checkpoint at step %d.', start_step)
    if is_writer:
      writers.truncate_metrics(workdir, start_step)
  elif initial is not None:
    state = initial

  writer = writers.create_writer(workdir, steps_per_epoch, jax.process_index())
  # The host decides which steps recompute the penalty (no lax.cond on the device): two
  # compiled steps, each compiled on first use.
  recompute_due = optim.make_recompute_fn(run.regularizer, steps_per_epoch)
  train_steps = {
      flag: parallel.data_parallel(
          steps.make_train_step(model, tx, run.regularizer.name, recompute_penalty=flag),
          mesh, batch_args=(1,), num_args=2, donate_argnums=(0,))
      for flag in (True, False)}
  eval_step = parallel.data_parallel(steps.make_eval_step(model), mesh, batch_args=(1,),
                                     num_args=2)
  measurements = _Measurements(run.measure, batch_size=run.batch_size,
                               label_noise=run.dataset.label_noise, model=model, inp=inp,
                               mesh=mesh, rng=measure_rng)
  eval_splits = [s for s in data.EVAL_SPLITS if inp.has_split(s)]

  if start_step == 0:
    writer.write_hparams(config_files.flat_fields(_config_dict(config)))
    if run.measure.every_epochs or run.measure.every_steps:
      writer.write_scalars(0, jax.device_get(measurements.fisher(state)))
  # Console progress from process 0 only (the others' writers discard, but it also logs).
  report = periodic_actions.ReportProgress(num_train_steps=last_step, writer=writer,
                                           every_secs=30.0) if is_writer else lambda step: None
  train_sums, train_count = None, 0
  latest: Dict[str, float] = {}
  iterator = inp.train_iterator(start_step)
  for step in range(start_step + 1, last_step + 1):  # `step` counts updates done after it.
    train_step = train_steps[recompute_due(step - 1)]
    state, metrics = train_step(state, parallel.shard_batch(next(iterator), mesh))
    train_sums = metrics if train_sums is None else jax.tree.map(jnp.add, train_sums, metrics)
    train_count += 1
    report(step)
    due = _due(run, step, steps_per_epoch)
    record: Dict[str, Any] = {}
    if 'log' in due:
      record.update({f'train/{k}' if k != 'penalty' else 'regularizer/penalty':
                     float(v) / train_count for k, v in jax.device_get(train_sums).items()})
      train_sums, train_count = None, 0
    if 'fisher' in due:
      record.update(measurements.fisher(state))
    if 'hessian' in due:
      record.update(measurements.hessian(state))
    if 'eigen' in due:
      record.update(measurements.eigen(state))
    for split in eval_splits if 'eval' in due else ():
      record.update(_evaluate(eval_step, state, inp, split, run.batch_size, mesh))
    if record:
      record = {k: float(v) for k, v in jax.device_get(record).items()}
      writer.write_scalars(step, record)
      latest.update(record)
    if 'checkpoint' in due:
      ckpt.save(step, state)
    if on_epoch is not None and 'epoch_end' in due and on_epoch(step // steps_per_epoch):
      break

  ckpt.close()
  writer.flush()
  writer.close()
  return latest
