"""Model registry: `get_model(name, num_classes, **kwargs)` returns a flax.linen Module.

Registered: simple_cnn, vgg11 (batch_norm=False|True), resnet18 and resnet50
(stem='imagenet'|'cifar'), wide_resnet (depth, widen_factor, dropout_rate, stem_stride), densenet
(CIFAR DenseNet-BC: depth, growth_rate, bottleneck, compression, dropout_rate), densenet121,
mlp (depth, width, activation, batch_norm) and lenet5.
Every one also takes `dtype` (computation dtype; 'bfloat16' on GPU/TPU; parameters stay float32).
docs/models.md lists the kwargs and parameter counts.

Every model is called as `model.apply(variables, images [B, H, W, C], train=bool)` and returns
float32 logits [B, num_classes] (float64 for dtype='float64'). Models with BatchNorm keep running
averages in the `batch_stats` collection (used in evaluation and in every curvature measurement)
and are called with `mutable=['batch_stats']` in training; models without BatchNorm carry no
`batch_stats`.
BatchNorm has no axis_name: under shard_map its statistics are per device, and the training step
averages the updated running averages with `lax.pmean(batch_stats, 'data')`. Models with
`dropout_rate > 0` need `rngs={'dropout': key}` in training.
"""

import inspect
from typing import Callable, Dict

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models.densenet import DenseNet, densenet, densenet121
from fisher_jax.models.lenet import LeNet5
from fisher_jax.models.mlp import MLP, mlp
from fisher_jax.models.resnet import ResNet, resnet18, resnet50
from fisher_jax.models.simple_cnn import SimpleCNN
from fisher_jax.models.vgg import VGG, vgg11
from fisher_jax.models.wide_resnet import WideResNet, wide_resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16,
           'float64': jnp.float64}  # float64 needs jax.enable_x64 (brute-force references).

# name -> constructor(num_classes, **kwargs): a family's class, or a function that validates the
# variant's options and builds it.
_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    'simple_cnn': SimpleCNN,
    'vgg11': vgg11,
    'resnet18': resnet18,
    'resnet50': resnet50,
    'wide_resnet': wide_resnet,
    'densenet': densenet,
    'densenet121': densenet121,
    'mlp': mlp,
    'lenet5': LeNet5,
}


def available_models():
  """Sorted names accepted by `get_model`."""
  return sorted(_REGISTRY)


def register_model(name: str, constructor: Callable[..., nn.Module]):
  """Adds a model family of your own to the registry, so that configs can name it.

  ```
  class Linear(nn.Module):
    num_classes: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(self.num_classes, use_bias=self.use_bias)(x.reshape(len(x), -1))

  models.register_model('linear', Linear)   # then config.model.name = 'linear'
  ```

  Args:
    name: the `config.model.name` to register, not yet taken (see `available_models()`).
    constructor: `constructor(num_classes=..., **kwargs) -> nn.Module` (a flax module class or a
      function); its other keyword arguments are the family's options (`config.model.*`), and
      `get_model` rejects any other.

  Raises:
    ValueError: `name` is already registered.
  """
  if name in _REGISTRY:
    raise ValueError(f'model name {name!r} is already registered; choose another name.')
  _REGISTRY[name] = constructor


def _accepted_kwargs(constructor):
  target = getattr(constructor, 'func', constructor)  # functools.partial
  params = inspect.signature(target).parameters
  return sorted(p for p in params if p not in ('self', 'num_classes', 'parent', 'name'))


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a registered model.

  Args:
    name: registry name, e.g. 'simple_cnn' (see `available_models()`).
    num_classes: number of output logits.
    **kwargs: the family's options; `dtype` may be a string ('bfloat16').

  Raises:
    ValueError: unknown name or option, with the valid choices.
  """
  if name not in _REGISTRY:
    raise ValueError(f'model.name={name!r} is unknown; choose one of {available_models()}.')
  constructor = _REGISTRY[name]
  allowed = _accepted_kwargs(constructor)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'model.{unknown[0]} is not an option of model {name!r}; '
                     f'its options are {allowed}.')
  if isinstance(kwargs.get('dtype'), str):
    if kwargs['dtype'] not in _DTYPES:
      raise ValueError(f'model.dtype={kwargs["dtype"]!r} is unknown; choose one of '
                       f'{sorted(_DTYPES)}.')
    kwargs['dtype'] = _DTYPES[kwargs['dtype']]
  return constructor(num_classes=num_classes, **kwargs)
