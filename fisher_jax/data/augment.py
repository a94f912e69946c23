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

  Output pixel (y, x) of image i is input pixel (y + dy_i, x + dx_i), or (y + dy_i,
  W - 1 - x + dx_i) when flipped, with (dy_i, dx_i) = offsets_i - P, and 0 outside the image.
  This is one `ImageProjectiveTransformV3` (nearest, constant fill) for the whole batch: exact
  pixel copies, about 1.5x faster than two gathers on a padded copy.

  Args:
    images: [b, H, W, C] uint8 or float (raw pixels: the padding is black).
    offsets: int32 [b, 2], top-left corner (row, column) of each crop in the padded image, in
      [0, 2P].
    flips: bool [b], which images are mirrored left-right (after cropping).
    padding: P, pixels of padding per side.

  Returns:
    [b, H, W, C], the same dtype as `images`.
  """
  height, width = images.shape[1], images.shape[2]
  shift = tf.cast(offsets - padding, tf.float32)
  flip = tf.cast(flips, tf.float32)
  zero, one = tf.zeros_like(flip), tf.ones_like(flip)
  # Each row maps an output (x, y) to the input (a0 x + a1 y + a2, b0 x + b1 y + b2).
  transforms = tf.stack([1 - 2 * flip, zero, shift[:, 1] + flip * (width - 1),
                         zero, one, shift[:, 0], zero, zero], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
      interpolation='NEAREST', fill_mode='CONSTANT')


def inception_crop(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
  """Random-resized crop of one image (Inception style): 8%-100% of the area, aspect 3/4-4/3.

  Args:
    image: uint8 [h, w, C] of any size.
    seed: int64 [2], the stateless seed of this example.
    size: output side S.

  Returns:
    float32 [S, S, C] in raw pixel units.
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  return tf.image.resize(crop, [size, size], method='bilinear', antialias=True)


def resize_center_crop(image: tf.Tensor, size: int, crop_fraction: float = 0.875) -> tf.Tensor:
  """Resizes the shorter side to size / crop_fraction and takes the central S x S crop.

  Args:
    image: uint8 [h, w, C] of any size.
    size: output side S (e.g. 224 of a 256 resize).
    crop_fraction: S over the resized shorter side.

  Returns:
    float32 [S, S, C] in raw pixel units.
  """
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = (size / crop_fraction) / tf.minimum(height, width)
  new_h = tf.cast(tf.round(height * scale), tf.int32)
  new_w = tf.cast(tf.round(width * scale), tf.int32)
  image = tf.image.resize(image, [new_h, new_w], method='bilinear', antialias=True)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, -1])
