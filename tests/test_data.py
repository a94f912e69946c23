"""The digits dataset through the real TFDS machinery and the in-memory input pipeline.

The 1797 sklearn digits are all distinct images, so an image identifies its example: the tests
decode batches back to raw pixels and compare them with scikit-learn's copy.
"""

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from fisher_jax import data
from fisher_jax.data import digits as digits_lib

import synthetic_inputs  # tests/synthetic_inputs.py

SPEC = data.get_spec('digits')


def _raw(images):
  """Normalized float images [N, 8, 8, 1] -> raw pixel values (int) [N, 64]."""
  raw = images * np.asarray(SPEC.std) + np.asarray(SPEC.mean)
  np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)  # normalization is (x - mean) / std
  return np.round(raw).astype(np.int64).reshape(len(images), -1)


def _keys(raw):
  return [row.tobytes() for row in raw]


@pytest.fixture(scope='module')
def sklearn_digits():
  d = sk_datasets.load_digits()
  images = d.images.astype(np.int64).reshape(1797, -1)
  return {k: i for i, k in enumerate(_keys(images))}, d.target


def _make(data_dir, batch_size=128, seed=0, process_index=0, process_count=1, **fields):
  name = fields.pop('name', 'digits')
  return synthetic_inputs.make_input(data_dir, name, batch_size=batch_size, seed=seed,
                                     process_index=process_index,
                                     process_count=process_count, **fields)


def _eval_all(inp, split, batch_size):
  """All batches of one process's eval iterator, concatenated."""
  batches = list(inp.eval_iterator(split, batch_size))
  assert len(batches) == inp.num_eval_batches(split, batch_size)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_digits_builder_prepares_offline_with_the_fixed_split(data_dir, sklearn_digits):
  index, target = sklearn_digits
  inp = _make(data_dir, val_fraction=0.0)
  assert (inp.num_train, inp.num_examples('test')) == (1437, 360)
  assert not inp.has_split('val') and inp.has_split('test')
  test = _eval_all(inp, 'test', 64)
  assert test['image'].dtype == np.float32 and test['image'].shape[1:] == (8, 8, 1)
  assert test['label'].dtype == np.int32 and test['mask'].dtype == np.float32
  real = test['mask'] == 1
  rows = [index[k] for k in _keys(_raw(test['image'][real]))]
  _, expected_test = digits_lib._split_indices()
  assert sorted(rows) == sorted(expected_test.tolist())  # each test example exactly once
  np.testing.assert_array_equal(test['label'][real], target[rows])
  assert real.sum() == 360 and np.all(test['image'][~real] == 0)


def test_train_batches_are_normalized_epochs_without_repeats(data_dir, sklearn_digits):
  index, target = sklearn_digits
  inp = _make(data_dir)
  assert inp.num_train == 1437 - 144 and inp.steps_per_epoch == inp.num_train // 128
  it = inp.train_iterator(0)
  epoch = [next(it) for _ in range(inp.steps_per_epoch)]
  batch = epoch[0]
  assert batch['image'].shape == (128, 8, 8, 1) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  images = np.concatenate([b['image'] for b in epoch])
  # Normalized over the whole epoch: per-channel mean about 0 and std about 1.
  assert abs(images.mean()) < 0.1 and abs(images.std() - 1) < 0.1
  rows = [index[k] for k in _keys(_raw(images))]
  assert len(set(rows)) == len(rows)  # no example twice in an epoch
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in epoch]), target[rows])
  val = _eval_all(inp, 'val', 128)
  val_rows = {index[k] for k in _keys(_raw(val['image'][val['mask'] == 1]))}
  assert len(val_rows) == 144 and not val_rows & set(rows)  # train and val disjoint
  train_split, _ = digits_lib._split_indices()
  assert val_rows <= set(train_split.tolist())  # val is carved from train


def test_order_is_a_function_of_seed_and_step(data_dir):
  inp = _make(data_dir, augment=True)
  spe = inp.steps_per_epoch
  it = inp.train_iterator(0)
  stream = [next(it) for _ in range(spe + 3)]
  again = _make(data_dir, augment=True).train_iterator(0)
  for batch in stream:
    other = next(again)
    np.testing.assert_array_equal(batch['image'], other['image'])
    np.testing.assert_array_equal(batch['label'], other['label'])
  # Resuming at step s reproduces the batches of an uninterrupted iterator.
  resumed = inp.train_iterator(spe + 1)
  for step in (spe + 1, spe + 2):
    np.testing.assert_array_equal(next(resumed)['image'], stream[step]['image'])
  # A new epoch has a new order; another seed another order.
  assert not np.array_equal(stream[0]['label'], stream[spe]['label'])
  other_seed = next(_make(data_dir, seed=1, augment=True).train_iterator(0))
  assert not np.array_equal(other_seed['image'], stream[0]['image'])


def test_augmentation_crops_and_never_flips_digits(data_dir, sklearn_digits):
  index, _ = sklearn_digits
  plain = next(_make(data_dir).train_iterator(5))
  augmented = next(_make(data_dir, augment=True).train_iterator(5))
  np.testing.assert_array_equal(plain['label'], augmented['label'])  # same examples
  raw_plain = _raw(plain['image']).reshape(-1, 8, 8)
  raw_aug = _raw(augmented['image']).reshape(-1, 8, 8)
  shifted = 0
  for x, y in zip(raw_plain, raw_aug):
    padded = np.pad(x, 1)
    # Each augmented image is the padded original cropped at one of the 9 offsets.
    offsets = [(i, j) for i in range(3) for j in range(3)
               if np.array_equal(padded[i:i + 8, j:j + 8], y)]
    assert offsets, 'an augmented digit is not a padded crop of its original'
    shifted += (1, 1) not in offsets
  assert shifted > 64  # 8 of 9 offsets move the image


def test_processes_read_rows_of_the_same_global_batch(data_dir):
  whole = _make(data_dir, augment=True, batch_size=96).train_iterator(7)
  parts = [_make(data_dir, augment=True, batch_size=96, process_index=p,
                 process_count=3).train_iterator(7) for p in range(3)]
  for _ in range(2):
    batch = next(whole)
    pieces = [next(p) for p in parts]
    assert all(p['image'].shape[0] == 32 for p in pieces)
    np.testing.assert_array_equal(np.concatenate([p['image'] for p in pieces]), batch['image'])
    np.testing.assert_array_equal(np.concatenate([p['label'] for p in pieces]), batch['label'])


def test_eval_shards_are_disjoint_and_cover_the_split(data_dir, sklearn_digits):
  index, _ = sklearn_digits
  shards = [_eval_all(_make(data_dir, process_index=p, process_count=2), 'test', 50)
            for p in range(2)]
  assert len(shards[0]['mask']) == len(shards[1]['mask'])  # same number of batches
  rows = [[index[k] for k in _keys(_raw(s['image'][s['mask'] == 1]))] for s in shards]
  assert not set(rows[0]) & set(rows[1])
  assert len(rows[0]) + len(rows[1]) == 360
  _, expected_test = digits_lib._split_indices()
  assert sorted(rows[0] + rows[1]) == sorted(expected_test.tolist())


@pytest.mark.parametrize('field, value, match', [
    ('name', 'mnist', 'dataset.name'),
    ('label_noise', 1.0, 'dataset.label_noise'),
    ('label_noise', -0.1, 'dataset.label_noise'),
    ('val_fraction', 1.0, 'dataset.val_fraction'),
    ('train_subset', 5000, 'dataset.train_subset'),
    ('train_subset', 2.5, 'dataset.train_subset'),
    ('augment', 'yes', 'dataset.augment'),
])
def test_invalid_config_values_name_the_field(data_dir, field, value, match):
  with pytest.raises(ValueError, match=match):
    _make(data_dir, **{field: value})


@pytest.mark.parametrize('field', ['data_dir', 'label_noise', 'augment', 'val_fraction',
                                   'train_subset'])
def test_a_missing_field_is_named_not_filled_with_a_default_in_code(data_dir, field):
  """Defaults live in configs/default.py only: a dataset section without a field fails."""
  config = synthetic_inputs.dataset_config('digits', data_dir=data_dir)
  del config[field]
  with pytest.raises(ValueError, match=f'dataset.{field} is missing; add it to the config'):
    data.read_settings(config)


def test_batch_size_must_divide_among_processes(data_dir):
  with pytest.raises(ValueError, match='batch_size=100 .* multiple of 3'):
    _make(data_dir, batch_size=100, process_count=3)
  with pytest.raises(ValueError, match='batch_size=5000'):
    _make(data_dir, batch_size=5000)
