"""VGG-11 in its CIFAR form, with or without BatchNorm.

The CIFAR form (as in the widely used pytorch-cifar VGG) keeps VGG's eight 3x3 conv layers and
five 2x2 max-pools and replaces the three 4096-wide ImageNet classifier layers by one linear
layer on the 512 final channels: 9,225,610 parameters for 10 classes without BatchNorm and
9,231,114 with it. Conv layers keep their bias in both forms, as in that reference.
"""

from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from fisher_jax.models import layers

# Conv widths, 'M' = 2x2 max-pool (configuration "A" of Simonyan & Zisserman).
VGG11_LAYERS = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')


class VGG(nn.Module):
  """VGG feature extractor and one linear classifier.

  Attributes:
    num_classes: number of output logits C.
    layer_spec: conv widths and 'M' for max-pool, in order.
    batch_norm: whether each conv is followed by BatchNorm (before the ReLU).
    dtype: computation dtype (parameters stay float32); e.g. jnp.bfloat16 on GPU/TPU.
  """
  num_classes: int
  layer_spec: Sequence[Union[int, str]] = VGG11_LAYERS
  batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images [B, H, W, C_in] to logits [B, num_classes] (float32; float64 if dtype is).

    The last feature map is averaged over space (it is 1x1 for 32x32 inputs, so this is the
    reference network there; other sizes still work).
    """
    x = x.astype(self.dtype)
    for spec in self.layer_spec:
      if spec == 'M':
        # 'SAME' equals the reference's unpadded pooling on even sizes and keeps a 1x1 map.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
        continue
      x = nn.Conv(int(spec), (3, 3), padding=1, kernel_init=layers.CONV_INIT_FAN_OUT,
                  dtype=self.dtype)(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype)(x)
      x = nn.relu(x)
    x = layers.global_average_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(layers.logits_dtype(self.dtype))


def vgg11(num_classes: int, batch_norm: bool = False, dtype: Any = jnp.float32) -> VGG:
  """VGG-11, CIFAR form; `batch_norm=True` is VGG-11-BN."""
  if not isinstance(batch_norm, bool):
    raise ValueError(f'model.batch_norm={batch_norm!r} is invalid for vgg11; choose True or '
                     'False.')
  return VGG(num_classes=num_classes, layer_spec=VGG11_LAYERS, batch_norm=batch_norm,
             dtype=dtype)
