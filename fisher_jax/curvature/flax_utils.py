"""Turning a flax model into the per-example `logits_fn(params, inputs)` of the curvature API.

Per-example quantities (‖∇θ CE(x_i, y_i)‖², Tr(F)) need logits that depend on example i alone.
BatchNorm in training mode normalizes with the statistics of the batch, which couples the
examples; in evaluation mode it uses the running averages (`batch_stats`) and every example is
processed independently. `make_logits_fn` therefore applies the model in evaluation mode:
`train=False` when its `__call__` takes a `train` argument, `deterministic=True` when it takes
a `deterministic` one (flax's dropout convention), and nothing otherwise.
"""

import inspect
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax

# Keyword arguments that put a module in evaluation mode, passed when its __call__ takes them.
EVAL_MODE_KWARGS = {'train': False, 'deterministic': True}


def _call_parameters(model) -> Optional[Mapping[str, inspect.Parameter]]:
  """The parameters of the function that receives the inputs, or None if unknown."""
  if isinstance(model, nn.Module):
    target = type(model).__call__
  else:  # `module.apply` (bound) or any other apply function
    owner = getattr(model, '__self__', None)
    target = type(owner).__call__ if isinstance(owner, nn.Module) else model
  try:
    return inspect.signature(target).parameters
  except (TypeError, ValueError):
    return None


def _eval_kwargs(model) -> dict:
  parameters = _call_parameters(model)
  if parameters is None:
    return {}
  return {k: v for k, v in EVAL_MODE_KWARGS.items() if k in parameters}


def make_logits_fn(model, batch_stats: Optional[Any] = None, *,
                   collections: Optional[Mapping[str, Any]] = None,
                   eval_kwargs: Optional[Mapping[str, Any]] = None) -> Callable[..., jax.Array]:
  """The per-example logits function of a flax model or apply function, in evaluation mode.

  Args:
    model: a flax.linen Module (called `model.apply(variables, inputs, **eval_kwargs)`), or a
      plain apply function `apply_fn(variables, inputs, **eval_kwargs) -> logits` such as
      `module.apply` or a `TrainState.apply_fn`.
    batch_stats: the model's `batch_stats` collection (BatchNorm running averages), or None for
      a model without BatchNorm. Inside `jax.jit`, pass the traced `batch_stats` (build the
      function inside the jitted function) so XLA does not constant-fold them.
    collections: any other non-parameter variable collections the model reads (e.g.
      `{'spectral_stats': ...}`), passed to `apply` unchanged.
    eval_kwargs: keyword arguments of the call; default: `train=False` and/or
      `deterministic=True` for those that the module's `__call__` (or the apply function)
      names, none otherwise. Pass `{}` to call it with the inputs alone.

  Returns:
    `logits_fn(params, inputs [B, ...]) -> [B, C]` = `apply({'params': params, 'batch_stats':
    batch_stats, **collections}, inputs, **eval_kwargs)`.

  Raises:
    ValueError: `model` is neither a flax Module nor callable.

  Example:
    >>> @jax.jit
    ... def measure(params, batch_stats, images, rng):
    ...   logits_fn = make_logits_fn(model, batch_stats)
    ...   return fisher_trace(logits_fn, params, images, estimator='sampled', rng=rng)
  """
  if isinstance(model, nn.Module):
    apply = model.apply
  elif callable(model):
    apply = model
  else:
    raise ValueError(f'model={type(model).__name__} is neither a flax Module nor an apply '
                     'function; pass the module or its apply function.')
  kwargs = dict(_eval_kwargs(model) if eval_kwargs is None else eval_kwargs)
  extra = dict(collections or {})
  if batch_stats is not None:
    extra['batch_stats'] = batch_stats

  def logits_fn(params, inputs) -> jax.Array:
    return apply({'params': params, **extra}, inputs, **kwargs)  # pyright: ignore[reportReturnType]

  return logits_fn
