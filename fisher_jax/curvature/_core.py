"""The one core of the curvature functions and the regularizers (private).

Both `fisher_jax.curvature` and `fisher_jax.regularizers` build their quantities from these
pieces, so that a penalty's value IS the curvature function's value:

* the mapped axis: `batch_axes(axis_name)`. The inputs a function receives are this device's
  rows of a global batch split evenly, in batch order (device d holds rows d*b .. d*b+b-1), over
  the mesh axes `axis_name` names; `axis_name=None` means every manual axis of the enclosing
  `jax.shard_map` (none outside one: the inputs are the whole batch).
* the device-varying cast: `as_varying(tree, axes)`, so that a gradient with respect to
  replicated parameters stays this device's gradient (JAX would otherwise sum it over devices
  under `check_vma=True`) and `global_mean` is the only reduction.
* the global mean over devices: `global_mean(tree, axes)`, `lax.pmean` of per-device means.
* labels drawn reproducibly from `(rng, global batch)`: `sampled_labels` (ŷ ~ p_θ(·|x), exactly
  `jax.random.categorical(rng, logits [B, C])` of the whole global batch) and `random_labels`
  (ỹ = `jax.random.randint(rng, (B,), 0, C)`). The noise of the GLOBAL batch is drawn on every
  device from the same `rng` and this device's rows kept (`local_rows`): no collective, and
  1 device and 8 devices draw the same labels. Sampled labels use the Gumbel-max trick,
  ŷ_i = argmax_c (z_ic + G_ic) with G = `jax.random.gumbel(rng, [B, C])`, which is how
  `jax.random.categorical` draws (tests check the equality); `gumbel_rows` draws G alone so that
  the arg-max can be taken where the logits are (inside a per-example pass).
* the mean cross-entropy gradient at given labels: `ce_logit_grad` (∂CE/∂z = softmax(z) - e_y)
  and `mean_ce_grad`, (1/b) Σ_i ∇θ CE(x_i, y_i) = J_zᵀ (softmax(z) - e_y) / b over this
  device's rows, one pullback of the forward pass (no collective; `global_mean` of it is the
  global-batch gradient). A single example's gradient is `mean_ce_grad` of a batch of one.
"""

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

Axes = Tuple[str, ...]
AxisName = Optional[Union[str, Sequence[str]]]


def batch_axes(axis_name: AxisName = None) -> Axes:
  """The mesh axes the batch is split over: `axis_name`'s, or the enclosing shard_map's."""
  if axis_name is None:
    return tuple(jax.sharding.get_abstract_mesh().manual_axes)
  return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def _num_devices(axes: Axes) -> int:
  """How many devices the manual `axes` span together (1 for ())."""
  if not axes:
    return 1
  return math.prod(lax.axis_size(a) for a in axes)


def as_varying(tree, axes: Axes):
  """Marks replicated arrays as device-varying over `axes` (no data movement; () : no-op).

  Inside `jax.shard_map` with `check_vma=True`, the gradient with respect to a replicated
  (invariant) value comes back already summed over the devices; differentiating with respect to
  a varying copy keeps every gradient local, so that `global_mean` is the only reduction, with or
  without `check_vma`.
  """
  if not axes:
    return tree

  def cast(x):
    varying = jax.typeof(x).manual_axis_type.varying
    missing = tuple(a for a in axes if a not in varying)
    return lax.pcast(x, missing, to='varying') if missing else x

  return jax.tree.map(cast, tree)


def global_mean(tree, axes: Axes):
  """The mean over the devices of `axes` of per-device values (each a mean over equal rows)."""
  return lax.pmean(tree, axes) if axes else tree


def local_rows(x: jax.Array, b: int, axes: Axes) -> jax.Array:
  """This device's rows [b, ...] of a global-batch array [B, ...] (all of it for ())."""
  if not axes:
    return x
  return lax.dynamic_slice_in_dim(x, lax.axis_index(axes) * b, b)


def _global_draw(draw: Callable, b: int, axes: Axes) -> jax.Array:
  """`draw(B)` for the global batch B = b * devices, this device's rows [b, ...]."""
  return local_rows(draw(b * _num_devices(axes)), b, axes)


def gumbel_rows(rng, shape, dtype, axes: Axes) -> jax.Array:
  """This device's rows of G = gumbel(rng, [B, C]), the noise `categorical(rng, z)` adds.

  Args:
    rng: PRNG key, the same on every device.
    shape: this device's logits shape [b, C].
    dtype: the logits' dtype.
    axes: `batch_axes(...)`.
  """
  b, *rest = shape
  return _global_draw(lambda n: jax.random.gumbel(rng, (n, *rest), dtype), b, axes)


def labels_from_noise(logits: jax.Array, noise: jax.Array) -> jax.Array:
  """argmax(z + G) over the last axis: categorical samples; constants (no gradient)."""
  return lax.stop_gradient(jnp.argmax(lax.stop_gradient(logits) + noise, axis=-1))


def sampled_labels(rng, logits: jax.Array, axes: Axes) -> jax.Array:
  """ŷ = categorical(rng, global logits [B, C]), this device's rows [b]; constants."""
  return labels_from_noise(logits, gumbel_rows(rng, logits.shape, logits.dtype, axes))


def random_labels(rng, logits: jax.Array, axes: Axes) -> jax.Array:
  """ỹ = randint(rng, (B,), 0, C) for the global batch, this device's rows [b]."""
  b, num_classes = logits.shape
  return _global_draw(lambda n: jax.random.randint(rng, (n,), 0, num_classes), b, axes)


def ce_logit_grad(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """∂CE/∂z = softmax(z) - e_label, [..., C]."""
  return jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)


LabelsArg = Union[jax.Array, Callable[[jax.Array], jax.Array]]


def mean_ce_grad(logits_fn, params, inputs, labels: LabelsArg):
  """(1/b) Σ_i ∇θ CE(x_i, y_i) over this device's b rows, and the forward pass it pulled back.

  Args:
    logits_fn: `logits_fn(params, inputs [b, ...]) -> [b, C]`.
    params: the parameter pytree θ (made `as_varying` by the caller inside shard_map).
    inputs: [b, ...] this device's rows.
    labels: [b] integer labels, or `labels(logits) -> [b]` for labels drawn from this forward
      pass (e.g. `lambda z: sampled_labels(rng, z, axes)`).

  Returns:
    `(grads, logits [b, C], pullback)`: the local mean gradient shaped like params (no
    collective: `global_mean` of it is the global-batch mean), and the forward pass's logits
    and `jax.vjp` pullback for further cotangents (e.g. `mean_ce_cotangent`).
  """
  logits, pullback = jax.vjp(lambda p: logits_fn(p, inputs), params)
  if callable(labels):
    labels = labels(logits)
  (grads,) = pullback(mean_ce_cotangent(logits, labels))
  return grads, logits, pullback


def mean_ce_cotangent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The logits cotangent [b, C] of the mean cross-entropy (1/b) Σ_i CE(z_i, y_i)."""
  return ce_logit_grad(logits, labels) / logits.shape[0]
