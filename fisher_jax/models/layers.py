"""Building blocks shared by the model families: BatchNorm with the study's semantics, initializers.

BatchNorm semantics (all families):

* `train=True`: normalize with the statistics of the batch the module sees, and update the
  running averages in the `batch_stats` collection (call `apply(..., mutable=['batch_stats'])`).
* `train=False` (evaluation and every curvature measurement): normalize with the running
  averages, so each example's logits depend on that example alone.
* No `axis_name`: under `jax.shard_map` the statistics are those of one device's shard (as with
  `pmap`); the data-parallel step averages the updated running averages across devices with
  `lax.pmean(batch_stats, 'data')`.

Momentum 0.9 and epsilon 1e-5 are PyTorch's defaults (its momentum 0.1 weighs the new batch),
which the published CIFAR/ImageNet numbers of these architectures were trained with.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal initializers: torchvision's ResNet and VGG and the Wide ResNet reference use fan-out,
# torchvision's DenseNet fan-in.
CONV_INIT_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
CONV_INIT_FAN_IN = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def batch_norm(train: bool, dtype: Any, name: Optional[str] = None) -> nn.BatchNorm:
  """A BatchNorm over the channel axis with the semantics of this module's docstring.

  Call it inside a compact method; it normalizes activations [..., C] and keeps float32 scale,
  bias and running averages whatever the computation `dtype`.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, name=name)


def global_average_pool(x):
  """Mean over the spatial axes: [B, H, W, C] -> [B, C]."""
  return x.mean(axis=(1, 2))


def logits_dtype(dtype: Any):
  """Dtype of returned logits: float32 for float32/bfloat16/float16 computation, float64 for a
  float64 model (brute-force references under `jax.enable_x64`)."""
  return jnp.promote_types(dtype, jnp.float32)
