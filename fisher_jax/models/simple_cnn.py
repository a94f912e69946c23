"""SimpleCNN: conv32-conv32-maxpool-conv64-conv64-maxpool-dense128-dense, ReLU, no BatchNorm.

The small convolutional network of the Fisher-explosion study's SimpleCNN experiments ('SAME'
padding, 591,274 parameters on 32x32x3 inputs with 10 classes). It has no BatchNorm, so it carries no `batch_stats` and its logits are per-example
independent in training and evaluation alike.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers


class SimpleCNN(nn.Module):
  """Two conv blocks and a two-layer classifier head.

  Attributes:
    num_classes: number of output logits C.
    widths: channels of the two conv blocks (each block has two 3x3 convs).
    hidden: width of the hidden dense layer.
    dtype: computation dtype (parameters stay float32); e.g. jnp.bfloat16 on GPU/TPU.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  hidden: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is)."""
    del train  # No BatchNorm or dropout: train and eval modes are the same function.
    x = x.astype(self.dtype)
    for width in self.widths:
      for _ in range(2):
        x = nn.relu(nn.Conv(width, (3, 3), padding='SAME', dtype=self.dtype)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))
