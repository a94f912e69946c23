"""DenseNets (Huang et al. 2017): DenseNet-BC for CIFAR and DenseNet-121 for ImageNet.

Each layer of a dense block reads the concatenation of all earlier feature maps of the block and
adds `growth_rate` channels: BN-ReLU-conv3x3, or with a bottleneck (the "B") BN-ReLU-conv1x1 to
4 * growth_rate channels first. Transitions between blocks are BN-ReLU-conv1x1 to
floor(compression * C) channels (the "C" when compression < 1) and a 2x2 average pool. After the
last block: BN-ReLU, global average pooling, a linear layer. Convs have no bias.

* CIFAR form (`densenet`): a 3x3 conv with 2 * growth_rate channels (16 without bottleneck),
  three blocks of (depth - 4) / 6 bottleneck layers ((depth - 4) / 3 plain layers).
  DenseNet-BC-100-12: 769,162 parameters for 10 classes (the published 0.8M).
* ImageNet form (`densenet121`): a 7x7 stride-2 conv with 64 channels, BN-ReLU, 3x3 stride-2
  max-pool, blocks of (6, 12, 24, 16) bottleneck layers with growth 32, compression 0.5:
  7,978,856 parameters for 1000 classes (torchvision's DenseNet-121, the published 8.0M).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers


def _conv(features, kernel, dtype, strides=1):
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=kernel // 2,
                 use_bias=False, kernel_init=layers.CONV_INIT_FAN_IN, dtype=dtype)


class DenseNet(nn.Module):
  """A stem, dense blocks joined by transitions, and a linear classifier.

  Attributes:
    num_classes: number of output logits C.
    block_sizes: layers per dense block, e.g. (16, 16, 16) for DenseNet-BC-100.
    growth_rate: k, channels added by each layer.
    bottleneck: whether each layer starts with a 1x1 conv to 4k channels.
    compression: theta, the fraction of channels a transition keeps.
    stem: 'cifar' (3x3 conv) or 'imagenet' (7x7 stride-2 conv and max-pool).
    init_features: channels of the stem conv.
    dropout_rate: dropout after each conv inside blocks and transitions in training; needs
      `rngs={'dropout': key}` in `apply` when positive.
    dtype: computation dtype (parameters stay float32); e.g. jnp.bfloat16 on GPU/TPU.
  """
  num_classes: int
  block_sizes: Sequence[int] = (16, 16, 16)
  growth_rate: int = 12
  bottleneck: bool = True
  compression: float = 0.5
  stem: str = 'cifar'
  init_features: int = 24
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def _bn_relu_conv(self, x, features, kernel, train):
    x = nn.relu(layers.batch_norm(train, self.dtype)(x))
    x = _conv(features, kernel, self.dtype)(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is)."""
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = _conv(self.init_features, 7, self.dtype, strides=2)(x)
      x = nn.relu(layers.batch_norm(train, self.dtype)(x))
      # flax annotates padding as str, but documents and takes (low, high) pairs too.
      x = nn.max_pool(x, (3, 3), strides=(2, 2),
                      padding=((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
    else:
      x = _conv(self.init_features, 3, self.dtype)(x)
    for block, num_layers in enumerate(self.block_sizes):
      for _ in range(num_layers):
        y = x
        if self.bottleneck:
          y = self._bn_relu_conv(y, 4 * self.growth_rate, 1, train)
        y = self._bn_relu_conv(y, self.growth_rate, 3, train)
        x = jnp.concatenate([x, y], axis=-1)
      if block < len(self.block_sizes) - 1:
        x = self._bn_relu_conv(x, int(self.compression * x.shape[-1]), 1, train)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(layers.batch_norm(train, self.dtype)(x))
    x = layers.global_average_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))


def densenet(num_classes: int, depth: int = 100, growth_rate: int = 12, bottleneck: bool = True,
             compression: float = 0.5, dropout_rate: float = 0.0,
             dtype: Any = jnp.float32) -> DenseNet:
  """CIFAR DenseNet of `depth` layers: DenseNet-BC-100-12 by default; DenseNet-40-12 is
  depth=40, bottleneck=False, compression=1.0."""
  layers_per_conv = 2 if bottleneck else 1
  if (not isinstance(depth, int) or (depth - 4) % (3 * layers_per_conv)
      or depth < 4 + 3 * layers_per_conv):
    rule = '6n + 4 with bottleneck (22, 40, 100, 190, ...)' if bottleneck else (
        '3n + 4 without bottleneck (7, 10, 40, 100, ...)')
    raise ValueError(f'model.depth={depth!r} is invalid for densenet; use {rule}.')
  if not isinstance(growth_rate, int) or growth_rate < 1:
    raise ValueError(f'model.growth_rate={growth_rate!r} is invalid for densenet; use a positive '
                     'integer (e.g. 12, 24, 40).')
  if not 0.0 < compression <= 1.0:
    raise ValueError(f'model.compression={compression!r} is invalid for densenet; use a value in '
                     '(0, 1] (0.5 for DenseNet-BC, 1 for no compression).')
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'model.dropout_rate={dropout_rate!r} is invalid for densenet; use a value '
                     'in [0, 1).')
  n = (depth - 4) // (3 * layers_per_conv)
  return DenseNet(num_classes=num_classes, block_sizes=(n, n, n), growth_rate=growth_rate,
                  bottleneck=bottleneck, compression=compression, stem='cifar',
                  init_features=2 * growth_rate if bottleneck else 16,
                  dropout_rate=dropout_rate, dtype=dtype)


def densenet121(num_classes: int, dropout_rate: float = 0.0,
                dtype: Any = jnp.float32) -> DenseNet:
  """DenseNet-121, ImageNet form."""
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'model.dropout_rate={dropout_rate!r} is invalid for densenet121; use a '
                     'value in [0, 1).')
  return DenseNet(num_classes=num_classes, block_sizes=(6, 12, 24, 16), growth_rate=32,
                  bottleneck=True, compression=0.5, stem='imagenet', init_features=64,
                  dropout_rate=dropout_rate, dtype=dtype)
