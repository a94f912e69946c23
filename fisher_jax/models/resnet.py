"""ResNet-18 and ResNet-50 (He et al. 2016), with the ImageNet stem or the CIFAR stem.

Torchvision's layout (ResNet v1.5: a bottleneck block downsamples in its 3x3 conv; 1x1
projection shortcuts only where the shape changes; convs without bias, each followed by
BatchNorm). Parameter counts, ImageNet stem and 1000 classes: ResNet-18 11,689,512 and
ResNet-50 25,557,032 (the published 11.7M and 25.6M). The CIFAR stem (one 3x3 stride-1 conv,
no max-pool, as in the widely used pytorch-cifar ResNets) gives 11,173,962 and 23,520,842
parameters for 10 classes.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers

STEMS = ('imagenet', 'cifar')


def _conv_bn(x, features: int, kernel: int, strides: int, train: bool, dtype):
  """A bias-free k x k conv (He fan-out init, 'same' padding) followed by BatchNorm."""
  conv = nn.Conv(features, (kernel, kernel), strides=strides, padding=kernel // 2,
                 use_bias=False, kernel_init=layers.CONV_INIT_FAN_OUT, dtype=dtype)
  return layers.batch_norm(train, dtype)(conv(x))


def _add_shortcut(x, y, strides: int, train: bool, dtype):
  """relu(shortcut(x) + y): identity, or a strided 1x1 conv + BatchNorm when shapes differ."""
  if x.shape[-1] != y.shape[-1] or strides != 1:
    x = _conv_bn(x, y.shape[-1], 1, strides, train, dtype)
  return nn.relu(x + y)


class _Block(nn.Module):
  """A residual block's fields.

  Attributes:
    features: channels of the block's convs (the output has `expansion` times as many).
    strides: stride of the downsampling conv (2 downsamples).
    dtype: computation dtype.
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32


class BasicBlock(_Block):
  """Two 3x3 convs (the first strided) and a residual connection (ResNet-18/34)."""
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    """[B, H, W, C_in] -> [B, H / strides, W / strides, features]."""
    y = nn.relu(_conv_bn(x, self.features, 3, self.strides, train, self.dtype))
    y = _conv_bn(y, self.features, 3, 1, train, self.dtype)
    return _add_shortcut(x, y, self.strides, train, self.dtype)


class BottleneckBlock(_Block):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and a residual connection (ResNet-50+)."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    """[B, H, W, C_in] -> [B, H / strides, W / strides, 4 * features]."""
    y = nn.relu(_conv_bn(x, self.features, 1, 1, train, self.dtype))
    y = nn.relu(_conv_bn(y, self.features, 3, self.strides, train, self.dtype))
    y = _conv_bn(y, self.features * self.expansion, 1, 1, train, self.dtype)
    return _add_shortcut(x, y, self.strides, train, self.dtype)


_BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class ResNet(nn.Module):
  """A stem, four stages of residual blocks (widths w, 2w, 4w, 8w), global pool, linear.

  Attributes:
    num_classes: number of output logits C.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: 'basic' or 'bottleneck'.
    stem: 'imagenet' (7x7 stride-2 conv, 3x3 stride-2 max-pool) or 'cifar' (3x3 stride-1 conv).
    width: channels of the stem and first stage (64 in the standard networks).
    dtype: computation dtype (parameters stay float32); e.g. jnp.bfloat16 on GPU/TPU.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  stem: str = 'imagenet'
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is)."""
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = nn.Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False,
                  kernel_init=layers.CONV_INIT_FAN_OUT, dtype=self.dtype)(x)
      x = nn.relu(layers.batch_norm(train, self.dtype)(x))
      # flax annotates padding as str, but documents and takes (low, high) pairs too.
      x = nn.max_pool(x, (3, 3), strides=(2, 2),
                      padding=((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
    else:
      x = nn.Conv(self.width, (3, 3), strides=1, padding=1, use_bias=False,
                  kernel_init=layers.CONV_INIT_FAN_OUT, dtype=self.dtype)(x)
      x = nn.relu(layers.batch_norm(train, self.dtype)(x))
    block_cls = _BLOCKS[self.block]
    for stage, num_blocks in enumerate(self.stage_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block_cls(self.width * 2**stage, strides=strides, dtype=self.dtype)(x, train)
    x = layers.global_average_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))


def _make_resnet(name, stage_sizes, block, num_classes, stem, width, dtype):
  if stem not in STEMS:
    raise ValueError(f'model.stem={stem!r} is invalid for {name}; choose one of {list(STEMS)} '
                     "('cifar' for 32x32 inputs).")
  if not isinstance(width, int) or isinstance(width, bool) or width < 1:
    raise ValueError(f'model.width={width!r} is invalid for {name}; use a positive integer '
                     '(64 is the standard network).')
  return ResNet(num_classes=num_classes, stage_sizes=stage_sizes, block=block, stem=stem,
                width=width, dtype=dtype)


def resnet18(num_classes: int, stem: str = 'imagenet', width: int = 64,
             dtype: Any = jnp.float32) -> ResNet:
  """ResNet-18: basic blocks (2, 2, 2, 2)."""
  return _make_resnet('resnet18', (2, 2, 2, 2), 'basic', num_classes, stem, width, dtype)


def resnet50(num_classes: int, stem: str = 'imagenet', width: int = 64,
             dtype: Any = jnp.float32) -> ResNet:
  """ResNet-50: bottleneck blocks (3, 4, 6, 3)."""
  return _make_resnet('resnet50', (3, 4, 6, 3), 'bottleneck', num_classes, stem, width, dtype)
