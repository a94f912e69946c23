"""Where per-example work runs: in chunks, on one device, or over a mesh (private plumbing).

The mathematics (`fisher.py`, `regularizers.py`) says what is computed for one device's rows;
this module says where:

* `map_in_chunks(fn, xs, chunk_size)`: `jax.vmap(fn)(xs)`, `chunk_size` examples at a time.
* `map_probes(fn, probes, like, chunk_size)`: `jax.vmap(fn)(probes)` over a leading axis of
  probe vectors (in chunks), or one probe at a time where the parameters `like` live on a mesh
  with Explicit axes (see the function).
* `map_examples(fn, params, xs, chunk_size, axes)`: `vmap(lambda x: fn(params, x))(xs)` that is
  correct on any device layout. With `axes` (inside shard_map; `_core.batch_axes`) the
  parameters are made per-device first (`_core.as_varying`). Under `jax.jit` with inputs on a
  multi-device mesh the work is placed in a `jax.shard_map` over all the mesh's axes (the batch padded with zero
  examples to a multiple of the mesh size, inputs and parameters resharded when the mesh has
  explicit axes). This is needed for correctness, not only speed: XLA's partitioner returns
  wrong per-example gradients for a vmapped convolution whose batch is sharded (the
  batch-grouped weight-gradient convolution; seen with jax 0.10.2 on CPU, Shardy and GSPMD).
"""

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from fisher_jax.curvature import _core


def check_chunk_size(chunk_size):
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f'chunk_size={chunk_size!r} is invalid; pass a positive int or None '
                     '(all examples at once).')


def map_in_chunks(fn: Callable, xs, chunk_size: Optional[int]):
  """Applies a per-example `fn` to every example of `xs`, `chunk_size` examples at a time.

  Args:
    fn: maps one example (a pytree of arrays without the batch axis) to a pytree of arrays.
    xs: pytree of arrays with a common leading batch axis B.
    chunk_size: examples per vmap call; None vmaps over all B at once.

  Returns:
    The pytree `jax.vmap(fn)(xs)`, leaves [B, ...]. With `chunk_size`, `jax.lax.map` runs
    consecutive chunks in a loop (the last B mod chunk_size examples in one more vmap), so peak
    memory is that of one chunk.
  """
  check_chunk_size(chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None or chunk_size >= batch:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


def on_explicit_mesh(tree) -> bool:
  """Whether the arrays of `tree`, or the enclosing mesh context, have Explicit mesh axes."""
  meshes = [getattr(jax.typeof(x).sharding, 'mesh', None) for x in jax.tree.leaves(tree)]
  meshes.append(jax.sharding.get_abstract_mesh())
  return any(m is not None and not m.empty and m.explicit_axes for m in meshes)


def map_probes(fn: Callable, probes, like, chunk_size: Optional[int] = None):
  """Applies a curvature product `fn` to every probe of `probes` (leaves [N, ...]).

  `jax.vmap(fn)(probes)`, `chunk_size` probes at a time (`map_in_chunks`): a linearized
  product shares its forward pass over the probes. Where `like` (the parameters the products
  act on) or the context has a mesh with Explicit axes, the probes run one at a time in a
  `jax.lax.map` instead (each product still sharded over the batch), because JAX's batching
  rule of a convolution folds the probe axis into the explicitly sharded batch axis, a reshape
  that explicit sharding rejects (ShardingTypeError; jax 0.10.2). Same numbers either way.
  """
  if on_explicit_mesh(like):
    check_chunk_size(chunk_size)
    return jax.lax.map(fn, probes)
  return map_in_chunks(fn, probes, chunk_size)


def _pad_batch(xs, multiple):
  """Pads the leading axis of every leaf with zeros to a multiple of `multiple`."""
  pad = -jax.tree.leaves(xs)[0].shape[0] % multiple
  return jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), xs)


def _inputs_mesh(xs):
  """The multi-device mesh the (traced) inputs live on, or None."""
  mesh = getattr(jax.typeof(jax.tree.leaves(xs)[0]).sharding, 'mesh', None)
  if mesh is None or mesh.empty or mesh.size == 1:
    mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.size == 1 else mesh


def map_examples(fn: Callable, params, xs, chunk_size: Optional[int], axes: Tuple[str, ...]):
  """`jax.vmap(lambda x: fn(params, x))(xs)` in chunks, correct on any device layout.

  Args:
    fn: `fn(params, example) -> pytree`, one example without the batch axis.
    params: the parameter pytree.
    xs: pytree of arrays with a common leading batch axis (this device's rows inside shard_map).
    chunk_size: examples per vmap call on each device; None: all at once.
    axes: the manual axes the batch is split over (`_core.batch_axes`), or ().

  Returns:
    Leaves [B, ...] (this device's rows inside shard_map).
  """
  check_chunk_size(chunk_size)
  if axes:
    params = _core.as_varying(params, axes)
    return map_in_chunks(lambda x: fn(params, x), xs, chunk_size)
  mesh = _inputs_mesh(xs)
  if mesh is None:
    return map_in_chunks(lambda x: fn(params, x), xs, chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  mesh_axes = tuple(mesh.axis_names)
  spec = jax.sharding.PartitionSpec(mesh_axes)
  xs = _pad_batch(xs, mesh.size)  # zero examples, computed and dropped
  if mesh.explicit_axes:  # explicit sharding: shard_map wants inputs laid out as its in_specs
    xs = jax.sharding.reshard(xs, jax.sharding.NamedSharding(mesh, spec))
    params = jax.sharding.reshard(
        params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  body = lambda p, x: map_examples(fn, p, x, chunk_size, mesh_axes)  # noqa: E731
  out = jax.shard_map(body, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), spec),
                      out_specs=spec)(params, xs)
  return jax.tree.map(lambda y: y[:batch], out)
