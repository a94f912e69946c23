"""Registry of dataset specs: what the input pipeline needs to know about each dataset.

A `DatasetSpec` names the TFDS builder, the splits, the image shape the model sees, the number
of classes, the per-channel normalization constants (in raw pixel units, so an image is fed as
`(x - mean) / std`) and how the dataset is prepared when it is missing. `get_spec(name)` looks a
spec up by the name used in `config.dataset.name`; `register_dataset` adds one (tests and
benchmarks register small locally built datasets this way).
"""

import dataclasses
from typing import Dict, Optional, Tuple

# How a missing dataset gets prepared.
PREPARE_AUTO = 'auto'        # built offline on first use (the embedded digits).
PREPARE_MANUAL = 'manual'    # built from an archive the user places in the manual directory.
PREPARE_DOWNLOAD = 'download'  # `tfds build` downloads it (a machine with network access).
PREPARE_LOCAL = 'local'  # TFDS's builder if prepared, else ours from files in a local directory.

_CIFAR10_MEAN = (125.31, 122.95, 113.87)   # 255 * (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (62.99, 62.09, 66.70)       # 255 * (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN = (129.30, 124.07, 112.43)  # 255 * (0.5071, 0.4865, 0.4409)
_CIFAR100_STD = (68.17, 65.38, 70.43)      # 255 * (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN = (123.68, 116.28, 103.53)  # 255 * (0.485, 0.456, 0.406)
_IMAGENET_STD = (58.40, 57.12, 57.38)      # 255 * (0.229, 0.224, 0.225)
_TINY_MEAN = (122.46, 114.27, 101.36)      # 255 * (0.4802, 0.4481, 0.3975)
_TINY_STD = (70.63, 68.62, 71.94)          # 255 * (0.2770, 0.2691, 0.2821)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about one dataset.

  Attributes:
    name: the name used in `config.dataset.name`.
    tfds_name: the TFDS builder name (with config), e.g. 'imagenet_resized/32x32'.
    num_classes: number of classes C; labels are int32 in [0, C).
    image_shape: (H, W, C) of the images the model receives.
    mean: per-channel mean in raw pixel units (0..255; 0..16 for digits).
    std: per-channel standard deviation in raw pixel units.
    train_split: the TFDS split used for training (and for carving `val`).
    test_split: the labelled TFDS split reported as `test`.
    val_split: a labelled TFDS validation split of its own, or None when `val` is carved from
      `train_split` by `dataset.val_fraction`.
    in_memory: True when the splits are decoded once into memory (uint8) and every batch is an
      index into them; this makes the data order a function of (seed, step) alone and
      independent of the process count. False streams TFDS files per process (imagenet2012).
    crop_padding: zero padding (pixels per side) of the random crop of `dataset.augment`.
    train_crop: 'pad' (the crop with padding above) or 'inception' (random-resized crop of the
      full-size image for training, resize and central crop for evaluation; imagenet2012).
    flip: whether `dataset.augment` flips images horizontally (False for digits).
    prepare: PREPARE_AUTO, PREPARE_MANUAL or PREPARE_DOWNLOAD.
    manual_file: for PREPARE_MANUAL, the archive(s) the user places in the manual directory
      (several joined by ', ' and ' and ').
    prepare_on_first_use: for PREPARE_MANUAL, whether `make_input` prepares the dataset itself
      when the archive is in the manual directory (quick for TinyImageNet, not for ImageNet).
    homepage: where the data comes from (used in the missing-dataset message).
    local_tfds_name: for PREPARE_LOCAL, our TFDS builder prepared offline on first use from the
      original files, used when TFDS's own `tfds_name` is not prepared (fashion_mnist_idx).
    source_dirs: for PREPARE_LOCAL, directories searched for the original files after the
      manual directory and `dataset.data_dir` (a system package's install directory).
  """
  name: str
  tfds_name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  train_split: str = 'train'
  test_split: str = 'test'
  val_split: Optional[str] = None
  in_memory: bool = True
  crop_padding: int = 4
  train_crop: str = 'pad'
  flip: bool = True
  prepare: str = PREPARE_DOWNLOAD
  manual_file: Optional[str] = None
  prepare_on_first_use: bool = False
  homepage: str = ''
  local_tfds_name: Optional[str] = None
  source_dirs: Tuple[str, ...] = ()


_REGISTRY: Dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, overwrite: bool = False):
  """Adds `spec` to the registry under `spec.name`.

  Raises:
    ValueError: the name is taken and `overwrite` is False.
  """
  if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
    raise ValueError(f'dataset {spec.name!r} is already registered; pass overwrite=True to '
                     'replace it.')
  _REGISTRY[spec.name] = spec


def available_datasets():
  """Sorted names accepted by `get_spec` (and `config.dataset.name`)."""
  return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
  """The spec registered under `name`.

  Raises:
    ValueError: unknown name, with the valid choices.
  """
  if name not in _REGISTRY:
    raise ValueError(f'dataset.name={name!r} is unknown; choose one of {available_datasets()}.')
  return _REGISTRY[name]


for _spec in (
    DatasetSpec(
        name='digits', tfds_name='sklearn_digits', num_classes=10, image_shape=(8, 8, 1),
        mean=(4.8842,), std=(6.0168,), crop_padding=1, flip=False, prepare=PREPARE_AUTO,
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset'),
    DatasetSpec(  # mean/std: of the 60,000 training images.
        name='fashion_mnist', tfds_name='fashion_mnist', num_classes=10,
        image_shape=(28, 28, 1), mean=(72.94,), std=(90.02,), crop_padding=2,
        prepare=PREPARE_LOCAL, local_tfds_name='fashion_mnist_idx',
        source_dirs=('/usr/share/datasets/fashion-mnist',),
        homepage='https://github.com/zalandoresearch/fashion-mnist'),
    DatasetSpec(
        name='cifar10', tfds_name='cifar10', num_classes=10, image_shape=(32, 32, 3),
        mean=_CIFAR10_MEAN, std=_CIFAR10_STD,
        homepage='https://www.cs.toronto.edu/~kriz/cifar.html'),
    DatasetSpec(
        name='cifar100', tfds_name='cifar100', num_classes=100, image_shape=(32, 32, 3),
        mean=_CIFAR100_MEAN, std=_CIFAR100_STD,
        homepage='https://www.cs.toronto.edu/~kriz/cifar.html'),
    DatasetSpec(
        name='tiny_imagenet', tfds_name='tiny_imagenet', num_classes=200,
        image_shape=(64, 64, 3), mean=_TINY_MEAN, std=_TINY_STD, test_split='validation',
        crop_padding=8, prepare=PREPARE_MANUAL, manual_file='tiny-imagenet-200.zip',
        prepare_on_first_use=True,
        homepage='http://cs231n.stanford.edu/tiny-imagenet-200.zip'),
    DatasetSpec(
        name='imagenet_resized/32x32', tfds_name='imagenet_resized/32x32', num_classes=1000,
        image_shape=(32, 32, 3), mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        test_split='validation',
        homepage='https://image-net.org/download-images (downsampled ImageNet 32x32)'),
    DatasetSpec(
        name='imagenet_resized/64x64', tfds_name='imagenet_resized/64x64', num_classes=1000,
        image_shape=(64, 64, 3), mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        test_split='validation', crop_padding=8,
        homepage='https://image-net.org/download-images (downsampled ImageNet 64x64)'),
    DatasetSpec(
        name='imagenet2012', tfds_name='imagenet2012', num_classes=1000,
        image_shape=(224, 224, 3), mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        test_split='validation', in_memory=False, train_crop='inception',
        prepare=PREPARE_MANUAL,
        manual_file='ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar',
        homepage='https://image-net.org/download-images'),
):
  register_dataset(_spec)
