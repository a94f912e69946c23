"""Where per-example work runs: in chunks, on one device, or over a mesh (private plumbing).

The mathematics (`fisher.py`, `regularizers/penalties.py`) says what is computed for one
device's rows; this module says where:

* `split_chunks(xs, chunk_size)`: the full chunks and the rest of a batch (also the probe
  chunks of `estimators`).
* `map_in_chunks(fn, xs, chunk_size)`: `jax.vmap(fn)(xs)`, `chunk_size` examples at a time.
* `map_probes(fn, probes, like, chunk_size)`: `jax.vmap(fn)(probes)` over a leading axis of
  probe vectors (in chunks), or one probe at a time where the parameters `like` live on a mesh
  with Explicit axes (see the function).
* `sum_examples(fn, params, xs, chunk_size, axes)`: Σ over the examples of `fn(params, x)`,
  chunk by chunk (memory holds one chunk's values, not [B, ...]), on any device layout.
  With `batched=True` (here and in `map_examples`) `fn` takes a whole chunk of examples (the
  'layers' engine, which needs the chunk's batch for its one backward pass).
* `map_examples(fn, params, xs, chunk_size, axes)`: `vmap(lambda x: fn(params, x))(xs)` that is
  correct on any device layout. With `axes` (inside shard_map; `_core.batch_axes`) the
  parameters are made per-device first (`_core.as_varying`). Under `jax.jit` with inputs on a
  multi-device mesh the work is placed in a `jax.shard_map` over all the mesh's axes (the batch
  padded with zero examples to a multiple of the mesh size, inputs and parameters resharded when
  the mesh has explicit axes). This is needed for correctness, not only speed: XLA's
  partitioner returns wrong per-example gradients for a vmapped convolution whose batch is
  sharded (the batch-grouped weight-gradient convolution; seen with jax 0.10.2 on CPU, Shardy
  and GSPMD).
"""

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from fisher_jax.curvature import _core


def check_chunk_size(chunk_size):
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f'chunk_size={chunk_size!r} is invalid; pass a positive int or None '
                     '(all examples at once).')


def split_chunks(xs, chunk_size: int):
  """`xs` as full chunks (leaves [n, chunk_size, ...]) and the rest (None if B divides)."""
  batch = jax.tree.leaves(xs)[0].shape[0]
  full = batch // chunk_size * chunk_size
  chunks = jax.tree.map(lambda x: x[:full].reshape((-1, chunk_size) + x.shape[1:]), xs)
  rest = jax.tree.map(lambda x: x[full:], xs) if full < batch else None
  return chunks, rest


def _whole(xs, chunk_size: Optional[int]) -> bool:
  check_chunk_size(chunk_size)
  return chunk_size is None or chunk_size >= jax.tree.leaves(xs)[0].shape[0]


def map_chunks(chunk_fn: Callable, xs, chunk_size: Optional[int]):
  """`chunk_fn(xs)` (leaves [B, ...] in, [B, ...] out), `chunk_size` examples at a time.

  Consecutive chunks run in a `jax.lax.map` (the last B mod chunk_size examples in one more
  call) and the outputs are concatenated in example order, so peak memory is one chunk's.
  """
  if chunk_size is None or _whole(xs, chunk_size):
    return chunk_fn(xs)
  chunks, rest = split_chunks(xs, chunk_size)
  out = jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:]), jax.lax.map(chunk_fn, chunks))
  if rest is None:
    return out
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, chunk_fn(rest))


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
  return map_chunks(jax.vmap(fn), xs, chunk_size)


def _sum0(tree):
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), tree)


def sum_chunks(chunk_sum: Callable, xs, chunk_size: Optional[int]):
  """Σ over chunks of `chunk_sum(chunk)` (each the sum of a chunk's values), `chunk_size`
  examples at a time.

  The chunks' sums are accumulated in a `jax.lax.scan`, so memory holds one chunk's values
  (the per-example values of all B examples never exist together). The sum's order depends on
  `chunk_size` (rounding only).
  """
  if chunk_size is None or _whole(xs, chunk_size):
    return chunk_sum(xs)
  chunks, rest = split_chunks(xs, chunk_size)
  first = chunk_sum(jax.tree.map(lambda x: x[0], chunks))

  def body(total, chunk):
    return jax.tree.map(jnp.add, total, chunk_sum(chunk)), None
  total, _ = jax.lax.scan(body, first, jax.tree.map(lambda x: x[1:], chunks))
  if rest is not None:
    total = jax.tree.map(jnp.add, total, chunk_sum(rest))
  return total


def per_example(fn: Callable, reduce: bool) -> Callable:
  """The chunk function of a per-example `fn(params, example)` (see `map_examples`)."""
  if not reduce:
    return lambda params, xs: jax.vmap(lambda x: fn(params, x))(xs)

  def chunk_sum(params, xs, weights):
    values = jax.vmap(lambda x: fn(params, x))(xs)
    if weights is None:
      return _sum0(values)
    return jax.tree.map(lambda v: jnp.sum(jnp.where(
        weights.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0), values)
  return chunk_sum


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


def _over_examples(fn: Callable, params, xs, chunk_size: Optional[int], axes: Tuple[str, ...],
                   reduce: bool, batched: bool):
  """`map_examples` (reduce=False) and `sum_examples` (reduce=True)."""
  check_chunk_size(chunk_size)
  chunk_fn = fn if batched else per_example(fn, reduce)
  if axes:
    params = _core.as_varying(params, axes)
  mesh = None if axes else _inputs_mesh(xs)
  if mesh is None:
    if reduce:
      return sum_chunks(lambda x: chunk_fn(params, x, None), xs, chunk_size)
    return map_chunks(lambda x: chunk_fn(params, x), xs, chunk_size)
  batch = jax.tree.leaves(xs)[0].shape[0]
  mesh_axes = tuple(mesh.axis_names)
  spec = jax.sharding.PartitionSpec(mesh_axes)
  rep = jax.sharding.PartitionSpec()
  # Zero examples pad the batch to a multiple of the mesh size: mapped, they are dropped; summed,
  # they carry a 0 weight (the weights travel with the examples).
  if reduce:
    xs = (xs, jnp.ones((batch,), bool))  # padded with False below

    def weighted(p, example, weights):
      del weights  # None: the only weights are the padding's, which travel with the examples
      x, padding = example
      return chunk_fn(p, x, padding)

    def body(p, x):
      return jax.lax.psum(sum_examples(weighted, p, x, chunk_size, mesh_axes, batched=True),
                          mesh_axes)
    out_spec = rep
  else:
    body = lambda p, x: map_examples(chunk_fn, p, x, chunk_size, mesh_axes,  # noqa: E731
                                     batched=True)
    out_spec = spec
  xs = _pad_batch(xs, mesh.size)
  if mesh.explicit_axes:  # explicit sharding: shard_map wants inputs laid out as its in_specs
    xs = jax.sharding.reshard(xs, jax.sharding.NamedSharding(mesh, spec))
    params = jax.sharding.reshard(params, jax.sharding.NamedSharding(mesh, rep))
  out = jax.shard_map(body, mesh=mesh, in_specs=(rep, spec), out_specs=out_spec)(params, xs)
  return out if reduce else jax.tree.map(lambda y: y[:batch], out)


def map_examples(fn: Callable, params, xs, chunk_size: Optional[int], axes: Tuple[str, ...], *,
                 batched: bool = False):
  """`jax.vmap(lambda x: fn(params, x))(xs)` in chunks, correct on any device layout.

  Args:
    fn: `fn(params, example) -> pytree`, one example without the batch axis; with `batched`,
      `fn(params, chunk) -> pytree` of a chunk of examples (leaves [b, ...] in and out).
    params: the parameter pytree.
    xs: pytree of arrays with a common leading batch axis (this device's rows inside shard_map).
    chunk_size: examples per vmap call on each device; None: all at once.
    axes: the manual axes the batch is split over (`_core.batch_axes`), or ().

  Returns:
    Leaves [B, ...] (this device's rows inside shard_map).
  """
  return _over_examples(fn, params, xs, chunk_size, axes, reduce=False, batched=batched)


def sum_examples(fn: Callable, params, xs, chunk_size: Optional[int], axes: Tuple[str, ...], *,
                 batched: bool = False):
  """Σ_i fn(params, x_i) over the examples of `xs`, chunk by chunk, on any device layout.

  The same placement as `map_examples`, but each chunk's values are summed as they are made
  (`sum_chunks`): memory holds one chunk's per-example values, which matters when they are
  as large as the parameters (a diagonal). With `batched`, `fn(params, chunk, weights)` gives
  the sum over a chunk's examples itself, leaving out those whose `weights` [b] (bool) are
  False (the padding of a batch the mesh does not divide; `weights` is None without padding).

  Returns:
    Leaves shaped like one example's `fn` value: the sum over this device's rows inside
    shard_map (with `axes`), over the whole batch otherwise.
  """
  return _over_examples(fn, params, xs, chunk_size, axes, reduce=True, batched=batched)
