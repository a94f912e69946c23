"""LeNet-5: conv6(5x5) - pool - conv16(5x5) - pool - dense120 - dense84 - dense C, ReLU.

LeCun et al. (1998), with ReLU and max-pooling as in today's usage; the first conv is 'SAME'
padded so 28x28 inputs keep the original's 32x32 geometry (28 -> 14 -> 10 -> 5), the second
'VALID'. No BatchNorm. It is the study's small convolutional model on CPU: see docs/models.md
for why (a training step costs a small fraction of SimpleCNN's on XLA:CPU).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers


class LeNet5(nn.Module):
  """LeNet-5 (61,706 parameters on 28x28x1 inputs with 10 classes).

  Attributes:
    num_classes: number of output logits C.
    dtype: computation dtype (parameters stay float32).
  """
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is)."""
    del train  # No BatchNorm or dropout.
    x = x.astype(self.dtype)
    x = nn.relu(nn.Conv(6, (5, 5), padding='SAME', dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding='VALID', dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))
