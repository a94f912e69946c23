"""Per-example squared gradients from each layer's inputs and output gradients (private).

The 'layers' engine of the per-example functions (`fisher.py`), as BackPACK and Goodfellow
(2015) compute them. For a layer with weights W applied to its input x_i of example i (at N
positions: 1 for a dense layer on [B, D] inputs, the output pixels of a convolution, the tokens
of a dense layer on [B, T, D]), with output gradient δ_i = ∂CE_i/∂(output) at those positions,

    ∇_W CE_i = Σ_n a_in ⊗ δ_in,    ∇_b CE_i = Σ_n δ_in,

where a_in is x_i at position n (a dense layer's input row; a convolution's input patch, laid
out like the kernel [k_1, ..., k_d, C_in]). One forward pass records the inputs x_i, one
backward pass of the summed loss to zero perturbations added to every layer's output gives all
the δ_i at once (the examples are independent, so the gradient of Σ_i CE_i with respect to
example i's output is δ_i), and the per-example weight gradients are contractions of the two:
no per-example backward pass. For a dense layer on [B, D] the squares need no per-example
gradient at all: ‖a_i ⊗ δ_i‖² = ‖a_i‖² ‖δ_i‖² and Σ_i (a_i ⊗ δ_i)² = (a²)ᵀ (δ²).

Several cotangent rows per example (R of them, each a logits cotangent [B, C]: one for
'sampled' and 'empirical', C for 'exact') give R backward passes and sum the squares over r.

An `nn.BatchNorm` in evaluation mode is y = x̂ ⊙ scale + bias with x̂ = (x - mean) /
sqrt(var + ε) from the running averages: ∇_scale CE_i = Σ_n x̂_in ⊙ δ_in, ∇_bias CE_i = Σ_n δ_in.

A model is covered when every parameter leaf is the kernel or bias of exactly one call of a
flax `nn.Dense` or `nn.Conv` (shared weights, no feature groups, input dilation or mask; padding
'SAME', 'VALID' or explicit) or the scale or bias of one call of an `nn.BatchNorm` in
evaluation mode (feature axis last, no mask), and every such layer's inputs and outputs carry
the examples on their leading axis. The calls are found by `flax.linen.intercept_methods` while
`logits_fn` runs, and a layer's parameters are matched to the leaves of `params` by identity, so
any function that applies flax modules to `params` as given is covered (a module's `apply`,
`make_logits_fn`'s function, a user's lambda). `unsupported_reason` says why a model is not,
and the per-example functions then use the vmap engine.
"""

import itertools
from typing import Callable, List, NamedTuple, Optional

import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fisher_jax.curvature import _core

class _Call(NamedTuple):
  """One call of a covered layer: its module, input, output, parameter leaves and the reason
  (if any) that the engine cannot take it."""
  module: nn.Module
  inputs: jax.Array
  outputs: jax.Array
  leaves: dict  # the module's own parameter name -> index into jax.tree.leaves(params) or None
  problem: Optional[str]
  stats: tuple = ()  # BatchNorm: the running (mean, var) it normalizes with


class NotCovered(Exception):
  """The model is not covered by the 'layers' engine (the message says why)."""


def _conv_problem(module: nn.Conv, inputs, args, kwargs) -> Optional[str]:
  del args, kwargs
  if not module.shared_weights or module.feature_group_count != 1 or module.mask is not None:
    return 'unshared weights, feature groups or a mask'
  if any(d != 1 for d in np.ravel(module.input_dilation or 1)):
    return 'input dilation'
  if isinstance(module.padding, str) and module.padding.upper() not in ('SAME', 'VALID'):
    return f'padding {module.padding!r}'
  if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
    return 'a custom convolution'
  kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) else \
      module.kernel_size
  if inputs.ndim != len(kernel_size) + 2:
    return 'inputs without exactly one batch axis'
  return None


def _dense_problem(module: nn.Dense, inputs, args, kwargs) -> Optional[str]:
  del args, kwargs
  if module.dot_general is not None or module.dot_general_cls is not None:
    return 'a custom dot_general'
  if inputs.ndim < 2:
    return 'inputs without a batch axis'
  return None


def _batchnorm_problem(module: nn.BatchNorm, inputs, args, kwargs) -> Optional[str]:
  running = args[1] if len(args) > 1 else kwargs.get('use_running_average')
  if running is None:
    running = module.use_running_average
  if not running:
    return 'batch statistics (training mode): its examples are not independent'
  if kwargs.get('mask') is not None:
    return 'a mask'
  if tuple(np.ravel(module.axis) % inputs.ndim) != (inputs.ndim - 1,):
    return 'a feature axis other than the last'
  return None


_PROBLEMS = {nn.Dense: _dense_problem, nn.Conv: _conv_problem, nn.BatchNorm: _batchnorm_problem}


def forward(logits_fn: Callable, params, inputs, perturbations=None):
  """`logits_fn(params, inputs)` with the calls of its Dense, Conv and BatchNorm layers recorded.

  Args:
    logits_fn: the model, `logits_fn(params, inputs [b, ...]) -> [b, C]`.
    params: the parameter pytree (the very arrays `logits_fn` hands to its flax modules).
    inputs: [b, ...].
    perturbations: None, or a list with one array per recorded call, added to its output.

  Returns:
    `(logits, calls)`, `calls` a list of `_Call` in call order.
  """
  leaf_index = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}
  calls: List[_Call] = []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or type(module) not in _PROBLEMS:
      return next_fun(*args, **kwargs)
    outputs = next_fun(*args, **kwargs)
    variables = module.variables
    x = args[0] if args else kwargs.get('inputs', kwargs.get('x'))  # Dense/Conv, BatchNorm
    stats = ()
    if isinstance(module, nn.BatchNorm) and 'batch_stats' in variables:
      stats = (variables['batch_stats']['mean'], variables['batch_stats']['var'])
    calls.append(_Call(module, x, outputs,
                       {name: leaf_index.get(id(value))
                        for name, value in variables.get('params', {}).items()},
                       _PROBLEMS[type(module)](module, x, args, kwargs), stats))
    if perturbations is not None:
      outputs = outputs + perturbations[len(calls) - 1]
    return outputs

  with nn.intercept_methods(interceptor):
    logits = logits_fn(params, inputs)
  return logits, calls


def _check(logits_fn, params, inputs) -> List[_Call]:
  """The calls of a covered model on `inputs` (shapes only), or NotCovered."""
  leaves = jax.tree.leaves(params)
  owners = {}

  def calls_on(batch):
    shape = jax.ShapeDtypeStruct((batch,) + inputs.shape[1:], inputs.dtype)
    found = []
    try:
      jax.eval_shape(lambda p, x: found.extend(forward(logits_fn, p, x)[1]), params, shape)
    except Exception as e:  # pylint: disable=broad-except  (the vmap engine will say it)
      raise NotCovered(f'it does not run on a batch of {batch} ({type(e).__name__})') from e
    return found
  one, two = calls_on(1), calls_on(2)
  if not leaves:
    raise NotCovered('the model has no parameters')
  if len(one) != len(two):
    raise NotCovered('its layers depend on the batch size')
  for number, (call, other) in enumerate(zip(one, two)):
    name = '/'.join(call.module.path) or type(call.module).__name__
    if call.problem:
      raise NotCovered(f'layer {name} has {call.problem}')
    for a, b in ((call.inputs, other.inputs), (call.outputs, other.outputs)):
      if a.shape[:1] != (1,) or b.shape != (2,) + a.shape[1:]:
        raise NotCovered(f'layer {name} does not carry the examples on its leading axis')
    if None in call.leaves.values():
      raise NotCovered(f'the parameters of layer {name} are not leaves of params as given')
    for leaf in call.leaves.values():
      if owners.setdefault(leaf, number) != number:
        raise NotCovered(f'layer {name} shares a parameter with another call')
  missing = [i for i in range(len(leaves)) if i not in owners]
  if missing:
    raise NotCovered(f'{len(missing)} parameter leaves belong to no Dense, Conv or BatchNorm '
                     'layer')
  return one


def unsupported_reason(logits_fn, params, inputs) -> Optional[str]:
  """None if the 'layers' engine covers the model, else why not (one clause)."""
  try:
    _check(logits_fn, params, inputs)
  except NotCovered as e:
    return str(e)
  return None


def _patches(module: nn.Conv, x: jax.Array, out_spatial) -> jax.Array:
  """The input patch of every output position: [b, N, K] with K laid out like the kernel's
  [k_1, ..., k_d, C_in] (strided slices of the padded input; no convolution)."""
  kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) else \
      tuple(module.kernel_size)
  d = len(kernel_size)
  broadcast = lambda v: (v,) * d if v is None or isinstance(v, int) else tuple(v)  # noqa: E731
  strides = tuple(s or 1 for s in broadcast(module.strides))
  dilation = tuple(s or 1 for s in broadcast(module.kernel_dilation))
  padding = flax_linear.canonicalize_padding(module.padding, d)
  if isinstance(padding, str):
    dilated = [(k - 1) * r + 1 for k, r in zip(kernel_size, dilation)]
    padding = lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding)
  x = jnp.pad(x, [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)])
  columns = []
  for offset in itertools.product(*(range(k) for k in kernel_size)):
    start = [0] + [o * r for o, r in zip(offset, dilation)] + [0]
    limit = [x.shape[0]] + [s + (n - 1) * t + 1 for s, n, t in
                            zip(start[1:-1], out_spatial, strides)] + [x.shape[-1]]
    columns.append(lax.slice(x, start, limit, [1] + list(strides) + [1]))
  patches = jnp.stack(columns, axis=-2)  # [b, *out, K_spatial, C_in]
  return patches.reshape((x.shape[0], int(np.prod(out_spatial)), -1))


# What a per-example pass keeps of the squared gradient entries g ⊙ g (summed over the examples
# of a chunk, and over the cotangent rows): 'total' their sum over all P parameters (a scalar),
# 'per_leaf' their sum per parameter leaf (a pytree like params of scalars), 'elementwise' all
# of them (diag F, a pytree like params), or 'rows' the total per example ([b], not summed over
# the examples). All come from the same backward passes: per-leaf Tr(F) and diag F cost what
# Tr(F) costs. Both engines (this module's and fisher.py's vmap) reduce with the two functions
# below.
REDUCTIONS = ('total', 'per_leaf', 'elementwise', 'rows')


def reduce_leaf(squares, reduction):
  """One leaf's per-example squares [b, ...] (summed over the cotangent rows) reduced:
  'rows' [b], 'elementwise' [...] (summed over b), 'total' and 'per_leaf' [] (summed)."""
  if reduction == 'rows':
    return jnp.sum(squares.reshape((squares.shape[0], -1)), axis=1)
  if reduction == 'elementwise':
    return jnp.sum(squares, axis=0)
  return jnp.sum(squares)


def combine_leaves(values, params, reduction):
  """The reduced leaves (a list in `jax.tree.leaves(params)` order) as the reduction's result:
  their sum ('total', 'rows'), or a pytree like params ('per_leaf', 'elementwise')."""
  if reduction in ('total', 'rows'):
    return sum(values)
  leaves, treedef = jax.tree.flatten(params)
  if reduction == 'per_leaf':
    return jax.tree.unflatten(treedef, values)
  return jax.tree.unflatten(treedef, [v.astype(leaf.dtype).reshape(leaf.shape)
                                      for v, leaf in zip(values, leaves)])


def _one_layer_grad_squares(call: _Call, deltas: jax.Array, reduction: str, dtype):
  """{leaf index: value} of one layer for `reduction`, from δ [R, b, *out, C_out]."""
  module, b = call.module, deltas.shape[1]
  deltas = deltas.astype(dtype).reshape((deltas.shape[0], b, -1, deltas.shape[-1]))
  out = {}
  if 'bias' in call.leaves:  # ∇_b CE_i = Σ_n δ_in
    out[call.leaves['bias']] = reduce_leaf(jnp.sum(jnp.sum(deltas, axis=2) ** 2, axis=0), reduction)
  if isinstance(module, nn.BatchNorm):  # y = x̂ ⊙ scale + bias: ∇_scale CE_i = Σ_n x̂_in ⊙ δ_in
    if 'scale' in call.leaves:
      mean, var = (s.astype(dtype) for s in call.stats)
      normalized = (call.inputs.astype(dtype) - mean) * lax.rsqrt(var + module.epsilon)
      grads = jnp.einsum('bnc,rbnc->rbc', normalized.reshape(deltas.shape[1:]), deltas)
      out[call.leaves['scale']] = reduce_leaf(jnp.sum(grads ** 2, axis=0), reduction)
    return out
  if isinstance(module, nn.Conv):
    acts = _patches(module, call.inputs.astype(dtype), call.outputs.shape[1:-1])
  else:
    acts = call.inputs.astype(dtype).reshape((b, -1, call.inputs.shape[-1]))
  if acts.shape[1] == 1:  # one position: a_i ⊗ δ_i, squares without forming it
    a_sq, d_sq = acts[:, 0] ** 2, jnp.sum(deltas[:, :, 0] ** 2, axis=0)  # [b, K], [b, C_out]
    if reduction == 'elementwise':
      value = jnp.einsum('bk,bc->kc', a_sq, d_sq, precision=module.precision)
    else:
      rows = jnp.sum(a_sq, 1) * jnp.sum(d_sq, 1)
      value = rows if reduction == 'rows' else jnp.sum(rows)
  else:  # ∇_W CE_i = Σ_n a_in ⊗ δ_in, [b, K, C_out] per cotangent row
    grads = jnp.einsum('bnk,rbnc->rbkc', acts, deltas, precision=module.precision)
    value = reduce_leaf(jnp.sum(grads ** 2, axis=0), reduction)
  out[call.leaves['kernel']] = value
  return out


def grad_squares(logits_fn: Callable, params, inputs, cotangents: Callable, reduction: str):
  """The per-example squared gradients g ⊙ g of a covered model, reduced.

  Args:
    logits_fn: `logits_fn(params, inputs [b, ...]) -> z [b, C]`, covered (`unsupported_reason`
      is None).
    params: the parameter pytree.
    inputs: [b, ...] one chunk of examples.
    cotangents: `cotangents(z [b, C]) -> [R, b, C]`, the R logits cotangents of every example
      whose gradients J_iᵀ u_ri are squared (and summed over r). Rows of zeros drop an example.
    reduction: 'total' (Σ_i Σ_r ‖g_ri‖², a scalar), 'per_leaf' (that per leaf, a pytree like
      params of scalars), 'elementwise' (Σ_i Σ_r g_ri ⊙ g_ri, a pytree like params) or 'rows'
      (Σ_r ‖g_ri‖² per example, [b]).
  """
  leaves = jax.tree.leaves(params)
  shapes = jax.eval_shape(lambda p, x: [c.outputs for c in forward(logits_fn, p, x)[1]],
                          params, inputs)
  # Inside shard_map the perturbations must vary over the devices like the examples do: the
  # gradient with respect to a replicated value would come back summed over the devices.
  zeros = _core.as_varying([jnp.zeros(s.shape, s.dtype) for s in shapes],
                           _core.batch_axes(None))
  layers = []  # the calls' static parts; their inputs come back as the vjp's aux

  def perturbed(e):
    logits, calls = forward(logits_fn, params, inputs, e)
    layers[:] = [c._replace(inputs=None, outputs=jax.ShapeDtypeStruct(c.outputs.shape,
                                                                      c.outputs.dtype))
                 for c in calls]
    return logits, [c.inputs for c in calls]
  logits, pullback, acts = jax.vjp(perturbed, zeros, has_aux=True)
  rows = cotangents(logits)  # differentiable in params, like the vmap engine's
  if rows.shape[0] == 1:  # one backward pass, without a batch axis of size 1
    deltas = [d[None] for d in pullback(rows[0])[0]]
  else:
    (deltas,) = jax.vmap(pullback)(rows)
  values = {}
  for call, x, delta in zip(layers, acts, deltas):
    if not call.leaves:  # e.g. a BatchNorm without scale and bias
      continue
    dtype = jnp.result_type(*(leaves[i] for i in call.leaves.values()))
    values.update(_one_layer_grad_squares(call._replace(inputs=x), delta, reduction, dtype))
  return combine_leaves([values[i] for i in range(len(leaves))], params, reduction)
