"""The streamed input (the imagenet2012 code path) on a CIFAR-shaped dataset built through TFDS.

The dataset is the in-memory `synthetic/cifar32` registered a second time with in_memory=False,
so it goes through per-process file shards; its images carry their own index.
"""

import functools

import numpy as np
import pytest

from fisher_jax import data
from fisher_jax.data import synthetic

import synthetic_inputs  # tests/synthetic_inputs.py

STREAMED = 'synthetic/cifar32_streamed'
SPEC = synthetic.synthetic_spec('cifar32', name=STREAMED, in_memory=False)
data.register_dataset(SPEC)
NUM_TEST_SPLIT = 103


_make = functools.partial(synthetic_inputs.make_input, name=STREAMED)
_ids = functools.partial(synthetic_inputs.example_ids, spec=SPEC)
_eval_ids = functools.partial(synthetic_inputs.eval_ids, spec=SPEC)


def test_two_processes_read_disjoint_eval_shards_that_cover_the_split(data_dir):
  inputs = [_make(data_dir, process_index=p, process_count=2) for p in range(2)]
  synthetic_inputs.check_two_processes_cover_eval_splits(
      inputs, {'test': NUM_TEST_SPLIT, 'val': 64}, SPEC)


def test_streamed_training_shards_resume_and_carve(data_dir):
  inputs = [_make(data_dir, augment=True, batch_size=128, process_index=p, process_count=2)
            for p in range(2)]
  spe = inputs[0].steps_per_epoch
  assert inputs[0].num_train == 576 and spe == 576 // 128
  for inp in inputs:
    it = inp.train_iterator(0)
    batches = [next(it) for _ in range(spe + 2)]
    assert batches[0]['image'].shape == (64, 32, 32, 3)
    # Resuming at a step (here across an epoch boundary) reproduces the same batches.
    resumed = inp.train_iterator(spe - 1)
    for step in (spe - 1, spe, spe + 1):
      np.testing.assert_array_equal(next(resumed)['image'], batches[step]['image'])
    assert not np.array_equal(batches[0]['label'], batches[spe]['label'])  # reshuffled
  plain = [_make(data_dir, batch_size=128, process_index=p, process_count=2) for p in range(2)]
  ids = []
  for inp in plain:
    it = inp.train_iterator(0)
    ids.append(np.concatenate([_ids(next(it)['image']) for _ in range(spe)]))
    assert len(set(ids[-1])) == len(ids[-1])  # no repeats within an epoch
  assert not set(ids[0]) & set(ids[1])  # disjoint file shards
  val_ids, _ = _eval_ids(plain[0], 'val', 32)
  assert not set(val_ids) & (set(ids[0]) | set(ids[1]))
  with pytest.raises(ValueError, match='dataset.label_noise'):
    _make(data_dir, label_noise=0.1)


def test_imagenet_eval_crop_is_the_exact_center_and_train_crop_a_resized_window():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fisher_jax.data import augment  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
  center = augment.resize_center_crop(tf.constant(image), 224).numpy()
  np.testing.assert_allclose(center, image[16:240, 48:272], atol=1e-3)  # shorter side already 256
  ramp = np.broadcast_to(np.arange(300, dtype=np.float32)[None, :, None] * 255 / 299,
                         (200, 300, 3)).astype(np.uint8)
  for k in range(5):
    crop = augment.inception_crop(tf.constant(ramp), tf.constant([k, 1], tf.int64), 224).numpy()
    assert crop.shape == (224, 224, 3)
    np.testing.assert_allclose(crop, np.broadcast_to(crop[:1], crop.shape), atol=1e-3)
    assert np.all(np.diff(crop[0, :, 0]) >= -1e-3)  # a window of the ramp, left to right
