"""Synthetic image datasets built offline through TFDS, for tests and benchmarks.

`SyntheticImages` is a TFDS builder whose configs mimic real datasets' shapes (e.g. 'cifar32':
32x32x3, 10 classes). Every image is uniform noise that carries its own identity in its first
pixels (channel 0 of pixels (0, 0), (0, 1), (0, 2): index mod 256, index // 256, split id), so a
test can tell which examples a batch holds. The labels are drawn from the index by a fixed seed.

The configs are registered as datasets 'synthetic/<config>' (in memory, no augmentation-unsafe
content); `synthetic_spec` makes variants, e.g. streamed, for tests of the other code path.
"""

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow_datasets as tfds

from fisher_jax.data import builder_info
from fisher_jax.data import specs as specs_lib

_SPLIT_IDS = {'train': 1, 'test': 2}
MEAN, STD = 127.5, 73.9  # of uniform noise on 0..255


class SyntheticConfig(tfds.core.BuilderConfig):
  """Shape and size of a synthetic dataset."""

  def __init__(self, *, image_shape: Tuple[int, int, int], num_classes: int, num_train: int,
               num_test: int, **kwargs):
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.num_train = num_train
    self.num_test = num_test


class SyntheticImages(tfds.core.GeneratorBasedBuilder):
  """Noise images that carry their index, with seeded labels; prepared offline."""

  BUILDER_CONFIGS = [
      SyntheticConfig(name='cifar32', description='CIFAR-shaped, small (tests).',
                      image_shape=(32, 32, 3), num_classes=10, num_train=640, num_test=103),
      SyntheticConfig(name='cifar32_large', description='CIFAR-shaped (benchmarks).',
                      image_shape=(32, 32, 3), num_classes=10, num_train=10000, num_test=1000),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return builder_info.image_classification_info(
        self, description=__doc__, image_shape=cfg.image_shape, num_classes=cfg.num_classes)

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split, num):
    cfg = self.builder_config
    labels = np.random.default_rng([_SPLIT_IDS[split], 7]).integers(cfg.num_classes, size=num)
    for i in range(num):
      yield i, {'image': make_image(cfg.image_shape, split, i), 'label': int(labels[i])}


def make_image(image_shape, split: str, index: int) -> np.ndarray:
  """The synthetic image `index` of `split`: uint8 [H, W, C] noise carrying its identity."""
  image = np.random.default_rng([_SPLIT_IDS[split], index]).integers(
      0, 256, size=image_shape, dtype=np.uint8)
  image[0, 0, 0], image[0, 1, 0], image[0, 2, 0] = index % 256, index // 256, _SPLIT_IDS[split]
  return image


def identify(raw_images: np.ndarray) -> np.ndarray:
  """Example indices [N] of raw (un-normalized, un-augmented) images [N, H, W, C]."""
  raw = np.round(raw_images).astype(np.int64)
  return raw[:, 0, 0, 0] + 256 * raw[:, 0, 1, 0]


def synthetic_spec(config_name: str, **overrides) -> specs_lib.DatasetSpec:
  """The DatasetSpec of config `config_name`, named 'synthetic/<config_name>' unless overridden."""
  cfg = {c.name: c for c in SyntheticImages.BUILDER_CONFIGS}[config_name]
  channels = cfg.image_shape[-1]
  spec = specs_lib.DatasetSpec(
      name=f'synthetic/{config_name}', tfds_name=f'synthetic_images/{config_name}',
      num_classes=cfg.num_classes, image_shape=cfg.image_shape, mean=(MEAN,) * channels,
      std=(STD,) * channels, crop_padding=max(1, cfg.image_shape[0] // 8),
      prepare=specs_lib.PREPARE_AUTO, homepage='(generated)')
  return dataclasses.replace(spec, **overrides)


for _config in SyntheticImages.BUILDER_CONFIGS:
  specs_lib.register_dataset(synthetic_spec(_config.name))
