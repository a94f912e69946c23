"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), CIFAR and TinyImageNet forms.

Pre-activation basic blocks (BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3), three groups of
n = (d - 4) / 6 blocks with 16k, 32k and 64k channels after a 3x3 conv with 16 channels, then
BN-ReLU, global average pooling and a linear layer. Convs have no bias; a 1x1 conv shortcut is
used where the width or resolution changes. WRN-28-10 has 36,479,194 parameters for 10 classes
(the published 36.5M), WRN-16-4 2,748,890.

TinyImageNet form: the same network on 64x64 inputs (global average pooling makes it
resolution independent; the parameter count changes only through num_classes), or with
`stem_stride=2`, which halves the resolution in the first conv so that the groups run at the
CIFAR network's 32/16/8 resolutions (about 4x less computation).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers


def _conv(features, kernel, strides, dtype):
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=kernel // 2,
                 use_bias=False, kernel_init=layers.CONV_INIT_FAN_OUT, dtype=dtype)


class WideBasicBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3(strides), BN-ReLU-dropout-conv3x3, plus shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first conv (2 downsamples).
    dropout_rate: dropout between the two convs in training (0 disables it).
    dtype: computation dtype.
  """
  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """[B, H, W, C_in] -> [B, H / strides, W / strides, features]."""
    pre = nn.relu(layers.batch_norm(train, self.dtype)(x))
    # As in the reference: a projection shortcut reads the pre-activated input.
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = _conv(self.features, 1, self.strides, self.dtype)(pre)
    else:
      shortcut = x
    y = _conv(self.features, 3, self.strides, self.dtype)(pre)
    y = nn.relu(layers.batch_norm(train, self.dtype)(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _conv(self.features, 3, 1, self.dtype)(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-widen_factor.

  Attributes:
    num_classes: number of output logits C.
    depth: d = 6n + 4 (n blocks per group).
    widen_factor: k; the groups have 16k, 32k, 64k channels.
    dropout_rate: dropout inside each block in training; needs `rngs={'dropout': key}` in
      `apply` when positive.
    stem_stride: stride of the first conv (1: CIFAR form; 2: 64x64 inputs at CIFAR cost).
    dtype: computation dtype (parameters stay float32); e.g. jnp.bfloat16 on GPU/TPU.
  """
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  stem_stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is)."""
    blocks_per_group = (self.depth - 4) // 6
    x = _conv(16, 3, self.stem_stride, self.dtype)(x.astype(self.dtype))
    for group, width in enumerate((16, 32, 64)):
      for i in range(blocks_per_group):
        strides = 2 if group > 0 and i == 0 else 1
        x = WideBasicBlock(width * self.widen_factor, strides=strides,
                           dropout_rate=self.dropout_rate, dtype=self.dtype)(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype)(x))
    x = layers.global_average_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))


def wide_resnet(num_classes: int, depth: int = 28, widen_factor: int = 10,
                dropout_rate: float = 0.0, stem_stride: int = 1,
                dtype: Any = jnp.float32) -> WideResNet:
  """WRN-`depth`-`widen_factor`, e.g. depth=16, widen_factor=4 or depth=28, widen_factor=10."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ValueError(f'model.depth={depth!r} is invalid for wide_resnet; use 6n + 4 with n >= 1 '
                     '(10, 16, 22, 28, 34, 40, ...).')
  if not isinstance(widen_factor, int) or widen_factor < 1:
    raise ValueError(f'model.widen_factor={widen_factor!r} is invalid for wide_resnet; use a '
                     'positive integer (e.g. 4, 8, 10).')
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'model.dropout_rate={dropout_rate!r} is invalid for wide_resnet; use a '
                     'value in [0, 1).')
  if stem_stride not in (1, 2):
    raise ValueError(f'model.stem_stride={stem_stride!r} is invalid for wide_resnet; choose 1 '
                     '(CIFAR form) or 2 (64x64 inputs at CIFAR resolution).')
  return WideResNet(num_classes=num_classes, depth=depth, widen_factor=widen_factor,
                    dropout_rate=dropout_rate, stem_stride=stem_stride, dtype=dtype)
