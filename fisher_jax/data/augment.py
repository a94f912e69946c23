"""Batch image preprocessing in TensorFlow: normalization, random crop with padding, flip.

The random choices of a training batch are drawn for the whole GLOBAL batch from a stateless
seed of (seed, step) and each process keeps its rows, so a step's augmented global batch is the
same whatever the number of processes, and resuming at a step reproduces it.
"""

from typing import Sequence

import tensorflow as tf


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Maps raw pixels [..., C] to float32 `(x - mean) / std` per channel."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (tf.cast(images, tf.float32) - mean) / std


def draw_crop_flip(seed: tf.Tensor, global_batch: int, padding: int, flip: bool):
  """Random crop offsets and flips for a whole global batch.

  Args:
    seed: int64 [2], the stateless seed of this batch.
    global_batch: B, the number of rows drawn.
    padding: P, pixels of zero padding per side; offsets lie in [0, 2P].
    flip: whether to draw flips (otherwise none is flipped).

  Returns:
    (offsets int32 [B, 2] (row, column), flips bool [B]).
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform(
      [global_batch, 2], crop_seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
  if flip:
    flips = tf.random.stateless_uniform([global_batch], flip_seed) < 0.5
  else:
    flips = tf.zeros([global_batch], tf.bool)
  return offsets, flips


def crop_and_flip(images: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor,
                  padding: int) -> tf.Tensor:
  """Pads each image with zeros, crops it back to its size at `offsets` and flips it.

  Args:
    images: [b, H, W, C], any dtype (raw pixels: the padding is black).
    offsets: int32 [b, 2], top-left corner of each crop in the padded image, in [0, 2P].
    flips: bool [b], which images are mirrored left-right (after cropping).
    padding: P, pixels of padding per side.

  Returns:
    [b, H, W, C], the same dtype as `images`.
  """
  height, width = images.shape[1], images.shape[2]
  if padding:
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None]  # [b, H]
    cols = offsets[:, 1:] + tf.range(width)[None]   # [b, W]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)  # [b, H, W + 2P, C]
    images = tf.gather(images, cols, axis=2, batch_dims=1)  # [b, H, W, C]
  return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
