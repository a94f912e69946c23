"""Checkpoints of the TrainState (the only module that talks to orbax).

Checkpoints live in `<workdir>/checkpoints/<step>/`. Orbax writes each one to a temporary
directory and renames it when complete, so a run killed while saving leaves the previous
checkpoint intact, and `latest_step` never returns a partial one. On several processes every
process calls `save` and `restore`; orbax coordinates them.
"""

import os
from typing import Any, Optional

from fisher_jax import _extras

_extras.require('train', __name__)

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores TrainStates in one directory.

  Args:
    directory: where checkpoints go (created when missing).
    max_to_keep: how many of the latest checkpoints to keep (None: all).
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any):
    """Saves `state` (asynchronously; `wait` or `close` blocks until it is on disk)."""
    self._manager.save(int(step), args=ocp.args.StandardSave(state))

  def restore(self, step: int, target: Any) -> Any:
    """Restores the checkpoint at `step` with the structure, dtypes and shardings of `target`.

    `target` may be a concrete state or its `jax.eval_shape` (with shardings set) twin.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

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
