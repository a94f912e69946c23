"""The device mesh, shardings and the data-parallel step wrapper.

A training or evaluation step is written as ONE device's program (pmap style: collectives over
the mesh axis `AXIS` = 'data', e.g. `lax.pmean(grads, 'data')`) and mapped over a 1-D mesh of
all devices (of all processes) with `jax.shard_map` under `jax.jit` (`data_parallel`). The
global batch is split along its first dimension across the devices; parameters and optimizer
state are replicated.

Measurements that need no hand-written collectives (curvature) are plain `jax.jit` functions of
globally sharded arrays; XLA partitions them. Several processes join one run through
`fisher_jax.training.multihost` before the mesh is made.
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS = 'data'


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array held whole by every device (parameters, optimizer state)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of an array split along its first (batch) dimension across the mesh."""
  return NamedSharding(mesh, P(AXIS))


def check_divisible(batch_size: int, mesh: Mesh, field: str = 'batch_size'):
  """Raises a ValueError naming `field` when it does not split evenly over the devices."""
  n = mesh.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(f'{field}={batch_size} must be a positive multiple of the number of '
                     f'devices ({n}); choose e.g. {field}={max(n, batch_size // n * n)}.')


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Mapping[str, jax.Array]:
  """Assembles global batch-sharded arrays from this process's rows of the global batch.

  Args:
    batch: arrays [b, ...] with this process's b = B / process_count consecutive rows.
    mesh: the data mesh.

  Returns:
    The same keys as global arrays [B, ...] split along 'data'.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (the same on every process) replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def data_parallel(step_fn: Callable, mesh: Mesh, *, batch_args: Sequence[int],
                  num_args: int, donate_argnums: Sequence[int] = ()) -> Callable:
  """Maps one device's `step_fn` over the mesh: `jax.jit(jax.shard_map(step_fn))`.

  Args:
    step_fn: a function of `num_args` positional arguments written for one device, using
      collectives over AXIS. Its outputs must be replicated (reduced over AXIS).
    mesh: the 1-D data mesh.
    batch_args: positions of the arguments that are split along their first dimension (the
      batch); all others are replicated.
    num_args: how many positional arguments `step_fn` takes.
    donate_argnums: arguments whose buffers the step may reuse (e.g. the train state).
  """
  in_specs = tuple(P(AXIS) if i in batch_args else P() for i in range(num_args))
  # check_vma=False keeps pmap's semantics: inside the step a gradient with respect to
  # replicated parameters is this device's gradient, reduced explicitly by `lax.pmean`. (With
  # check_vma=True, JAX would insert the sum over devices itself, and the explicit pmean of the
  # step would no longer be the mean.)
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs, out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=tuple(donate_argnums))
