"""The streaming input for datasets too big for memory (imagenet2012).

Each process reads its own file shard of the training split (`tfds.split_for_jax_process`),
shuffles it with a seed of (seed, epoch, process) and decodes only the examples it uses. The
data order is a function of (seed, step, process_count): resuming at step s skips the first
s mod S batches of the epoch without decoding them, but 1 process and 2 processes do NOT see the
same global batches (the in-memory input does). Evaluation reads disjoint shards
(`tfds.even_splits`) padded with a mask to the common number of batches, so every example counts
exactly once.

`val` is the first round(val_fraction * N) examples of the training split in TFDS order (fixed:
TFDS shuffled the examples when it prepared them); `train_subset` keeps the next n. Label noise
needs per-example bookkeeping and is only offered by the in-memory input.
"""

import math
from typing import Dict, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fisher_jax.data import augment as augment_lib
from fisher_jax.data import base

SHUFFLE_BUFFER = 10_000  # examples (encoded) per process
_SALT_FILES = 11
_SALT_BUFFER = 12


class StreamingInput(base.InputBase):
  """The streamed input of one process; the same interface as `pipeline.Input`."""

  def __init__(self, spec, settings, builder, **kwargs):
    super().__init__(spec, settings, **kwargs)
    if settings.label_noise > 0:
      raise ValueError(f'dataset.label_noise={settings.label_noise} is not supported for the '
                       f'streamed dataset {spec.name!r}; use 0 (or an in-memory dataset).')
    self._builder = builder
    splits = builder.info.splits
    total = splits[spec.train_split].num_examples
    first = 0
    self._eval_splits = {'test': spec.test_split}
    if spec.val_split is not None:
      self._eval_splits['val'] = spec.val_split
    elif settings.val_fraction > 0:
      first = int(round(settings.val_fraction * total))
      if not 1 <= first < total:
        raise ValueError(f'dataset.val_fraction={settings.val_fraction} carves {first} of the '
                         f'{total} training examples of {spec.name!r}; use a fraction that '
                         'leaves at least one example on each side.')
      self._eval_splits['val'] = f'{spec.train_split}[:{first}]'
    last = total
    if settings.train_subset is not None:
      if settings.train_subset > total - first:
        raise ValueError(f'dataset.train_subset={settings.train_subset} exceeds the '
                         f'{total - first} training examples of {spec.name!r} (after the '
                         f'validation carve-out); use at most {total - first}, or None for all.')
      last = first + settings.train_subset
    self._train_split = f'{spec.train_split}[{first}:{last}]'
    self._set_num_train(last - first)
    self._split_sizes = {k: splits[v].num_examples for k, v in self._eval_splits.items()}
    self._subsets = {}

  def _shard(self, split: str, process_index: int):
    return tfds.even_splits(self._eval_splits[split], self.process_count)[process_index]

  def _shard_size(self, split: str, process_index: int) -> int:
    return self._builder.info.splits[self._shard(split, process_index)].num_examples

  def _read(self, split, *, shuffle_seed=None):
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    return self._builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})

  def _decode(self, encoded, seed=None):
    """Encoded image -> float32 [H, W, C] raw pixels: random crop when `seed` is given."""
    height, _, channels = self.spec.image_shape
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    if self.spec.train_crop == 'inception':
      if seed is None:
        return augment_lib.resize_center_crop(image, height)
      return augment_lib.inception_crop(image, seed, height)
    image.set_shape(self.spec.image_shape)
    return tf.cast(image, tf.float32)

  def _epoch_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
    spec, local = self.spec, self.local_batch_size
    seed = self.seed
    key = [seed, epoch, self.process_index, self.process_count]
    split = tfds.split_for_jax_process(self._train_split, process_index=self.process_index,
                                       process_count=self.process_count, drop_remainder=True)
    file_seed = int(np.random.SeedSequence(key + [_SALT_FILES]).generate_state(1)[0])
    buffer_seed = int(np.random.SeedSequence(key + [_SALT_BUFFER]).generate_state(1)[0])
    ds = self._read(split, shuffle_seed=file_seed)
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=buffer_seed, reshuffle_each_iteration=False)
    ds = ds.take(self.steps_per_epoch * local).skip(skip_batches * local)  # skip: no decoding
    ds = ds.enumerate(start=skip_batches * local)
    augment = self.settings.augment
    inception = spec.train_crop == 'inception'
    example_seed = tf.constant([seed, epoch * self.process_count + self.process_index], tf.int64)

    def prepare(position, example):
      rng = tf.random.experimental.stateless_fold_in(example_seed, position)
      image = self._decode(example['image'], rng if augment and inception else None)
      if augment and inception and spec.flip:
        flip = tf.random.stateless_uniform([], tf.random.experimental.stateless_split(rng)[0])
        image = tf.cond(flip < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
      return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

    def finish(index, batch):
      images = batch['image']
      if augment and not inception:
        offsets, flips = augment_lib.draw_crop_flip(
            tf.random.experimental.stateless_fold_in(example_seed, -1 - index), local,
            spec.crop_padding, spec.flip)
        images = augment_lib.crop_and_flip(images, offsets, flips, spec.crop_padding)
      return {'image': augment_lib.normalize(images, spec.mean, spec.std),
              'label': batch['label']}

    ds = ds.map(tf.autograph.experimental.do_not_convert(prepare),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).enumerate(start=skip_batches)
    ds = ds.map(tf.autograph.experimental.do_not_convert(finish),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  def train_iterator(self, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Infinite training batches of this process from step `start_step` on.

    Yields:
      dict image float32 [b, H, W, C], label int32 [b]; b = batch_size // process_count. The
      global batch of a step depends on the process count (see the module docstring).
    """
    epoch, skip = divmod(int(start_step), self.steps_per_epoch)
    while True:
      yield from self._epoch_dataset(epoch, skip).as_numpy_iterator()
      epoch, skip = epoch + 1, 0

  def eval_iterator(self, split: str, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
    """This process's shard of `split`, padded to the common number of batches.

    Yields:
      dict image float32 [b, H, W, C] (zeros on padding), label int32 [b] (0 on padding), mask
      float32 [b]; b = batch_size // process_count.
    """
    local = self._local_eval_batch(batch_size)
    num_batches = self.num_eval_batches(split, batch_size)
    spec = self.spec
    size = self._shard_size(split, self.process_index)

    def prepare(example):
      image = augment_lib.normalize(self._decode(example['image']), spec.mean, spec.std)
      return {'image': image, 'label': tf.cast(example['label'], tf.int32),
              'mask': tf.constant(1.0)}

    def pad(batch):
      missing = local - tf.shape(batch['mask'])[0]
      return {k: tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1))
              for k, v in batch.items()}

    ds = self._read(self._shard(split, self.process_index))
    ds = ds.map(tf.autograph.experimental.do_not_convert(prepare),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local).map(tf.autograph.experimental.do_not_convert(pad))
    extra = num_batches - math.ceil(size / local)
    if extra > 0:
      empty = {'image': tf.zeros((local,) + tuple(spec.image_shape), tf.float32),
               'label': tf.zeros([local], tf.int32), 'mask': tf.zeros([local], tf.float32)}
      ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(extra))
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  def fixed_subset(self, num_examples: int, kind: str = 'all') -> Dict[str, np.ndarray]:
    """The first `num_examples` training examples in TFDS order (fixed), eval preprocessing.

    Only kind='all' exists: the streamed input has no label noise.
    """
    if kind != 'all':
      raise ValueError(f"fixed_subset(kind={kind!r}) needs label noise, which the streamed "
                       f"dataset {self.spec.name!r} does not offer; use kind='all'.")
    if num_examples not in self._subsets:
      ds = self._read(self._train_split).take(num_examples).map(
          tf.autograph.experimental.do_not_convert(
              lambda e: {'image': augment_lib.normalize(self._decode(e['image']),
                                                        self.spec.mean, self.spec.std),
                         'label': tf.cast(e['label'], tf.int32)}))
      batch = next(ds.batch(max(num_examples, 1)).as_numpy_iterator())
      self._subsets[num_examples] = batch
    return {k: v.copy() for k, v in self._subsets[num_examples].items()}
