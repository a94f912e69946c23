"""MLP: a multilayer perceptron on flattened images, optionally with BatchNorm.

`depth` hidden layers of `width` units, each Dense -> [BatchNorm] -> activation, then a linear
layer to the logits. The family the CPU-scale study trains to convergence in minutes: a step of
the 2x512 network on a batch of 128 Fashion-MNIST images costs a few milliseconds on a CPU.
"""

from typing import Any, Callable, Dict

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers

ACTIVATIONS: Dict[str, Callable] = {'relu': nn.relu, 'tanh': jnp.tanh, 'gelu': nn.gelu,
                                    'elu': nn.elu, 'silu': nn.silu, 'sigmoid': nn.sigmoid}


class MLP(nn.Module):
  """Dense layers on the flattened input.

  Attributes:
    num_classes: number of output logits C.
    depth: number of hidden layers (0: a linear classifier).
    width: units per hidden layer.
    activation: a name in ACTIVATIONS.
    batch_norm: BatchNorm after each hidden Dense (before the activation), with the semantics
      of `layers.batch_norm`.
    dtype: computation dtype (parameters stay float32).
  """
  num_classes: int
  depth: int = 2
  width: int = 512
  activation: str = 'relu'
  batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C] to logits [B, num_classes] (float32; float64 if dtype is)."""
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for _ in range(self.depth):
      x = nn.Dense(self.width, use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype)(x)
      x = ACTIVATIONS[self.activation](x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))


def mlp(num_classes: int, depth: int = 2, width: int = 512, activation: str = 'relu',
        batch_norm: bool = False, dtype: Any = jnp.float32) -> MLP:
  """An `MLP`, its options checked.

  Raises:
    ValueError: a negative depth, a width below 1, an unknown activation or a non-bool
      batch_norm, naming the field and what is allowed.
  """
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
    raise ValueError(f'model.depth={depth!r} is invalid for mlp; use a non-negative integer.')
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise ValueError(f'model.width={width!r} is invalid for mlp; use a positive integer.')
  if activation not in ACTIVATIONS:
    raise ValueError(f'model.activation={activation!r} is unknown; choose one of '
                     f'{sorted(ACTIVATIONS)}.')
  if not isinstance(batch_norm, bool):
    raise ValueError(f'model.batch_norm={batch_norm!r} is not a boolean; use True or False.')
  return MLP(num_classes=num_classes, depth=depth, width=width, activation=activation,
             batch_norm=batch_norm, dtype=dtype)
