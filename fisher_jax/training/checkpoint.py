"""Checkpoints of the TrainState (the only module that talks to orbax).

Checkpoints live in `<workdir>/checkpoints/<step>/`. Orbax writes each one to a temporary
directory and renames it when complete, so a run killed while saving leaves the previous
checkpoint intact, and `latest_step` never returns a partial one. On several processes every
process calls `save` and `restore`; orbax coordinates them.

What cannot be lost:

* a state with a non-finite value (NaN, inf) is never saved (`save` raises
  `NonFiniteStateError`), so a diverging run cannot evict its good checkpoints;
* the `keep` latest checkpoints are kept, and besides them the one with the best
  `best_metric` (validation accuracy in training), which is never evicted (orbax preservation
  policies: `LatestN` or `BestN`);
* `restore_latest` falls back over damaged checkpoints: one that cannot be read, or that reads
  as non-finite values (garbage inside an array file), is reported in one sentence, moved aside
  to `damaged_dir` (never deleted) and the next older one is tried. When none can be read,
  nothing is moved and `CheckpointUnreadableError` says so in one sentence.
"""

import os
from typing import Any, Callable, List, Optional, Tuple

from fisher_jax import _extras

_extras.require('train', __name__)

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_REASON_CHARS = 160  # Library messages (a tensorstore spec) are cut to this in our sentences.


class NonFiniteStateError(Exception):
  """`save` was given a state holding NaN or inf; nothing was written."""


class CheckpointUnreadableError(ValueError):
  """No checkpoint of the directory can be read (the sentence names each and why)."""


@jax.jit
def _all_finite(leaves) -> jax.Array:
  checks = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def is_finite(tree: Any) -> bool:
  """Whether every floating-point value of `tree` is finite (one small jitted reduction)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_all_finite(leaves))


def _reason(error: BaseException) -> str:
  text = (str(error).strip().splitlines() or [''])[0]
  if len(text) > _REASON_CHARS:
    text = text[:_REASON_CHARS] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


class Checkpointer:
  """Saves and restores TrainStates in one directory.

  Args:
    directory: where checkpoints go (created when missing).
    keep: how many of the latest checkpoints to keep (None: all).
    best_metric: the metric (given to `save`) whose highest-valued checkpoint is kept besides
      the latest ones; None keeps the latest only.
    damaged_dir: where `restore_latest` moves damaged checkpoints (default
      `<directory>_damaged`).
  """

  def __init__(self, directory: str, keep: Optional[int] = 3,
               best_metric: Optional[str] = None, damaged_dir: Optional[str] = None):
    self._directory = os.path.abspath(directory)
    self._damaged_dir = os.path.abspath(damaged_dir or self._directory + '_damaged')
    self._best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: metrics[best_metric]  # pylint: disable=unnecessary-lambda-assignment
      policies.append(checkpoint_managers.BestN(get_metric_fn=best_fn, n=1,
                                                keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            create=True, best_fn=best_fn, best_mode='max',
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies)))

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> Optional[int]:
    """The step of the checkpoint with the best `best_metric` (None without one)."""
    return self._manager.best_step() if self._best_metric else None

  def save(self, step: int, state: Any, metrics: Optional[dict] = None):
    """Saves `state` (asynchronously; `wait` or `close` blocks until it is on disk).

    Args:
      step: the checkpoint's step.
      state: the TrainState.
      metrics: {best_metric: value, ...} when the state was evaluated (picks the best one).

    Raises:
      NonFiniteStateError: `state` holds a non-finite value; nothing was written.
    """
    if not is_finite(state):
      raise NonFiniteStateError(f'the state at step {step} holds non-finite values')
    if metrics is not None and self._best_metric not in metrics:
      metrics = None
    self._manager.save(int(step), args=ocp.args.StandardSave(state),
                       metrics=dict(metrics) if metrics else None)

  def restore(self, step: int, target: Any) -> Any:
    """Restores the checkpoint at `step` with the structure, dtypes and shardings of `target`.

    `target` may be a concrete state or its `jax.eval_shape` (with shardings set) twin.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target: Any,
                     report: Callable[[str], None] = logging.warning) -> Tuple[int, Any]:
    """Restores the newest readable checkpoint, moving damaged newer ones aside.

    Args:
      target: as for `restore`.
      report: called with one sentence per damaged checkpoint moved aside.

    Returns:
      `(step, state)`, or `(0, None)` when the directory holds no checkpoint.

    Raises:
      CheckpointUnreadableError: there are checkpoints but none can be read; nothing was moved.
    """
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self.restore(step, target)
        if not is_finite(state):
          raise ValueError('it reads as non-finite values (garbage in an array file)')
      except Exception as error:  # pylint: disable=broad-except  (tensorstore, json, OS errors)
        damaged.append((step, _reason(error)))
        continue
      for bad_step, reason in damaged:
        moved_to = self._move_aside(bad_step)
        report(f'The checkpoint at step {bad_step} cannot be read ({reason}); it was moved to '
               f'{moved_to} and the run resumes from the checkpoint at step {step}.')
      if damaged:
        self._manager.reload()
      return step, state
    if damaged:
      details = '; '.join(f'step {s}: {r}' for s, r in damaged)
      raise CheckpointUnreadableError(
          f'no checkpoint in {self._directory} can be read ({details}); nothing was moved or '
          'deleted: repair them, or move them away to train from scratch.')
    return 0, None

  def _move_aside(self, step: int) -> str:
    """Moves checkpoint `step` into the damaged directory (process 0; the others wait)."""
    target = os.path.join(self._damaged_dir, str(step))
    if jax.process_index() == 0:
      os.makedirs(self._damaged_dir, exist_ok=True)
      suffix = 1
      while os.path.exists(target):
        target = os.path.join(self._damaged_dir, f'{step}.{suffix}')
        suffix += 1
      os.rename(os.path.join(self._directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'fisher_jax_checkpoint_moved_{step}')
    return target

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def restore_model_variables(directory: str, step: Optional[int] = None):
  """Reads the parameters and BatchNorm statistics of another run's checkpoint, read-only.

  Args:
    directory: the other run's `checkpoints/` directory.
    step: which checkpoint; None for the latest.

  Returns:
    `(step, params, batch_stats)` as host arrays (batch_stats is {} for models without them).

  Raises:
    ValueError: there is no such checkpoint.
  """
  if not os.path.isdir(directory):
    raise ValueError(f'init_from.workdir has no checkpoints directory {directory!r}; point it '
                     'at the workdir of a finished or checkpointed run.')
  manager = ocp.CheckpointManager(
      os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  steps = list(manager.all_steps())
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise ValueError(f'init_from.step={step!r} has no checkpoint in {directory!r}; '
                     f'its checkpoints are at steps {sorted(steps)}.')
  # Whole arrays onto one local device, whatever topology (processes, devices) wrote them:
  # orbax refuses the saved shardings of another topology, e.g. a pod slice's on one host.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(int(step)))
  restored = jax.device_get(manager.restore(int(step), args=ocp.args.StandardRestore(abstract)))
  manager.close()
  return int(step), restored['params'], restored.get('batch_stats') or {}
