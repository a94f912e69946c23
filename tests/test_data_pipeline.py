"""CIFAR-shaped data built locally through TFDS: label noise, subsets, augmentation,
multi-process reading and the missing-dataset message.

The synthetic images carry their own index (`synthetic.identify`), so the tests can tell which
examples a batch holds; the true labels are recomputed from the builder's seed.
"""

import functools
import socket

import numpy as np
import pytest

from fisher_jax import data

import synthetic_inputs  # tests/synthetic_inputs.py

NAME = 'synthetic/cifar32'
SPEC = data.get_spec(NAME)
NUM_TRAIN_SPLIT, NUM_TEST_SPLIT = 640, 103
TRUE_LABELS = np.random.default_rng([1, 7]).integers(10, size=NUM_TRAIN_SPLIT)  # the builder's


_make = functools.partial(synthetic_inputs.make_input, name=NAME)
_ids = functools.partial(synthetic_inputs.example_ids, spec=SPEC)
_eval_ids = functools.partial(synthetic_inputs.eval_ids, spec=SPEC)


# --- Label noise --------------------------------------------------------------------------------


def test_corrupt_labels_is_exact_and_uniform_over_other_classes():
  labels = np.random.default_rng(0).integers(10, size=100_000)
  noisy, is_noisy = data.corrupt_labels(labels, 10, 0.3, seed=5)
  assert is_noisy.sum() == 30_000
  assert np.all(noisy[is_noisy] != labels[is_noisy])
  assert np.all(noisy[~is_noisy] == labels[~is_noisy])
  # The new class is uniform over the 9 others: shifts 1..9 equally often (chi-square, 8 dof,
  # 99.9% quantile 26.1).
  counts = np.bincount((noisy[is_noisy] - labels[is_noisy]) % 10, minlength=10)
  assert counts[0] == 0
  expected = 30_000 / 9
  assert ((counts[1:] - expected) ** 2 / expected).sum() < 26.1
  again, _ = data.corrupt_labels(labels, 10, 0.3, seed=5)
  other, _ = data.corrupt_labels(labels, 10, 0.3, seed=6)
  np.testing.assert_array_equal(noisy, again)
  assert not np.array_equal(noisy, other)


def test_label_noise_fraction_subsets_and_training_labels(data_dir, q=0.37):
  inp = _make(data_dir, label_noise=q)
  everything = inp.fixed_subset(10_000, 'all')  # the whole training set, trained labels
  ids = _ids(everything['image'])
  assert len(ids) == inp.num_train == 576 and len(set(ids)) == 576
  wrong = everything['label'] != TRUE_LABELS[ids]
  assert abs(wrong.sum() - q * inp.num_train) <= 1  # the noisy fraction is q to one example
  noisy = inp.fixed_subset(10_000, 'noisy')
  clean = inp.fixed_subset(10_000, 'clean')
  noisy_ids, clean_ids = _ids(noisy['image']), _ids(clean['image'])
  assert set(noisy_ids) == set(ids[wrong]) and set(clean_ids) == set(ids[~wrong])
  assert np.all(noisy['label'] != TRUE_LABELS[noisy_ids])  # noisy labels always differ
  np.testing.assert_array_equal(clean['label'], TRUE_LABELS[clean_ids])
  # Training batches carry the same (noisy) labels.
  trained = dict(zip(ids, everything['label']))
  batch = next(inp.train_iterator(3))
  np.testing.assert_array_equal(batch['label'], [trained[i] for i in _ids(batch['image'])])
  # Validation labels stay clean.
  val = next(inp.eval_iterator('val', 64))
  real = val['mask'] == 1
  np.testing.assert_array_equal(val['label'][real], TRUE_LABELS[_ids(val['image'])[real]])
  # Fixed subsets: a fixed size, the same arrays for the same seed, another set for another one.
  small = inp.fixed_subset(20, 'noisy')
  assert len(small['label']) == 20 and set(_ids(small['image'])) <= set(noisy_ids)
  same = _make(data_dir, label_noise=q)
  np.testing.assert_array_equal(same.fixed_subset(20, 'noisy')['image'], small['image'])
  other_ids = set(_ids(_make(data_dir, label_noise=q, seed=1).fixed_subset(10_000, 'noisy')
                       ['image']))
  assert other_ids != set(noisy_ids)


def test_noisy_subset_needs_label_noise(data_dir):
  with pytest.raises(ValueError, match='dataset.label_noise'):
    _make(data_dir).fixed_subset(10, 'noisy')


# --- Subsets, splits, augmentation --------------------------------------------------------------


def test_train_subset_is_fixed_and_disjoint_from_val(data_dir):
  inp = _make(data_dir, train_subset=130, batch_size=32)
  assert inp.num_train == 130 and inp.steps_per_epoch == 4
  ids = _ids(inp.fixed_subset(1000)['image'])
  assert len(set(ids)) == 130
  other_seed = _make(data_dir, train_subset=130, batch_size=32, seed=3)
  assert set(_ids(other_seed.fixed_subset(1000)['image'])) == set(ids)  # fixed, not seeded
  it = inp.train_iterator(0)
  seen = np.concatenate([_ids(next(it)['image']) for _ in range(4)])
  assert len(set(seen)) == 128 and set(seen) <= set(ids)
  val_ids, _ = _eval_ids(inp, 'val', 64)
  assert len(val_ids) == 64 and not set(val_ids) & set(ids)
  test_ids, _ = _eval_ids(inp, 'test', 64)
  assert sorted(test_ids) == list(range(NUM_TEST_SPLIT))


def test_augmentation_is_a_padded_crop_with_flips(data_dir):
  plain = next(_make(data_dir).train_iterator(2))['image']
  augmented = next(_make(data_dir, augment=True).train_iterator(2))['image']
  pad = SPEC.crop_padding
  flipped = 0
  for x, y in zip(plain, augmented):
    raw = np.round(x * np.asarray(SPEC.std) + np.asarray(SPEC.mean))
    raw_y = np.round(y * np.asarray(SPEC.std) + np.asarray(SPEC.mean))
    padded = np.pad(raw, ((pad, pad), (pad, pad), (0, 0)))
    matches = [(i, j, f) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
               for f in (False, True)
               if np.array_equal(padded[i:i + 32, j:j + 32][:, ::-1] if f
                                 else padded[i:i + 32, j:j + 32], raw_y)]
    assert len(matches) == 1
    flipped += matches[0][2]
  assert 16 < flipped < 48  # about half of 64


# --- Multi-process reading ----------------------------------------------------------------------


def test_two_processes_read_disjoint_eval_shards_that_cover_the_split(data_dir):
  inputs = [_make(data_dir, process_index=p, process_count=2) for p in range(2)]
  synthetic_inputs.check_two_processes_cover_eval_splits(
      inputs, {'test': NUM_TEST_SPLIT, 'val': 64}, SPEC)


# --- Missing data -------------------------------------------------------------------------------


def _no_network(*args):
  raise OSError(f'this test forbids the network (connect{args[1:]})')


def test_missing_cifar10_fails_without_a_download_naming_the_prepare_command(tmp_path,
                                                                              monkeypatch):
  monkeypatch.setattr(socket.socket, 'connect', _no_network)  # A download attempt would fail.
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.make_input(synthetic_inputs.dataset_config('cifar10', data_dir=str(tmp_path)),
                    batch_size=128, seed=0,
                    process_index=0, process_count=1)
  message = str(info.value)
  assert "'cifar10'" in message and str(tmp_path) in message
  assert f'python -m fisher_jax.data.prepare cifar10 --data_dir={tmp_path}' in message
  assert f'tfds build cifar10 --data_dir={tmp_path}' in message
  assert not (tmp_path / 'downloads').exists()


def test_missing_tiny_imagenet_says_where_the_archive_goes(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.make_input(synthetic_inputs.dataset_config('tiny_imagenet', data_dir=str(tmp_path)),
                    batch_size=128, seed=0,
                    process_index=0, process_count=1)
  message = str(info.value)
  assert 'tiny-imagenet-200.zip' in message
  assert str(tmp_path / 'downloads' / 'manual') in message
