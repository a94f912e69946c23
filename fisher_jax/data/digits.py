"""The embedded digits dataset as a TFDS builder, prepared offline from scikit-learn's copy.

scikit-learn ships the UCI handwritten digits (1797 grey images of 8x8 pixels with values
0..16, 10 classes) inside the package, so this builder needs no network: the default experiment
goes through the same TFDS machinery as CIFAR. The split is fixed: a permutation of the 1797
examples by `numpy.random.RandomState(0)`; its first 1437 examples are `train` and the last 360
are `test`. Pixel values are stored unscaled (uint8 0..16); `specs.get_spec('digits')` holds the
matching normalization constants.
"""

import numpy as np
import tensorflow_datasets as tfds

from fisher_jax.data import builder_info

NUM_TEST = 360
SPLIT_SEED = 0


def _split_indices():
  """(train indices [1437], test indices [360]) into sklearn's `load_digits()` order."""
  perm = np.random.RandomState(SPLIT_SEED).permutation(1797)
  return perm[:-NUM_TEST], perm[-NUM_TEST:]


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits: 8x8x1 uint8 images (0..16), 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Seeded 1437/360 train/test split of sklearn.datasets.load_digits.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_info.image_classification_info(
        self, description=__doc__, image_shape=(8, 8, 1), num_classes=10,
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset')

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline: the data comes with scikit-learn.
    train, test = _split_indices()
    return {'train': self._generate_examples(train), 'test': self._generate_examples(test)}

  def _generate_examples(self, indices):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(digits.target[i])}
