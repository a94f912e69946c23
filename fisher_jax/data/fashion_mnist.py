"""Fashion-MNIST as a TFDS builder prepared offline from the four original IDX files.

Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test grey images of 28x28 pixels,
10 classes of clothing. TFDS's own `fashion_mnist` builder downloads it; this one (TFDS name
`fashion_mnist_idx`) reads the four original files from a directory instead:

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

(uncompressed copies without `.gz` are accepted too). `find_source_dir` looks for them in the
manual directory `<data_dir>/downloads/manual/`, then in `dataset.data_dir` itself, then in the
Debian package `dataset-fashion-mnist`'s `/usr/share/datasets/fashion-mnist/`, and the first
`make_input` prepares the TFDS dataset from them (seconds). Every file is read and checked
(magic number, dimensions, length, labels in 0..9) before anything is written; TFDS writes into
a temporary directory that it renames only when the whole dataset is written, so a corrupt or
truncated file leaves nothing behind. Splits: `train` (60,000) and `test` (10,000) in file
order; images uint8 [28, 28, 1], stored raw (TFDS's own builder stores PNGs, which take several
seconds to decode at every start).
"""

import gzip
import os
from typing import Dict, Iterable, Optional, Sequence, Tuple
import zlib

import numpy as np
import tensorflow_datasets as tfds

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
INSTALL_HINT = 'apt-get install dataset-fashion-mnist'
HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'
NUM_CLASSES = 10
# split -> (images file, labels file)
FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
         'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
FILE_NAMES = tuple(f for pair in FILES.values() for f in pair)
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # uint8 IDX files of 3 (images) and 1 (labels) dims


class IdxFileError(ValueError):
  """An IDX file is unreadable, truncated or not what its name says."""


def _locate(directory: str, name: str) -> Optional[str]:
  """`directory/name`, or its uncompressed twin without '.gz', or None."""
  for candidate in (name, name[:-len('.gz')]):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def find_source_dir(candidates: Iterable[Optional[str]]) -> Optional[str]:
  """The first directory of `candidates` that holds all four IDX files, or None."""
  for directory in candidates:
    if directory and all(_locate(str(directory), f) for f in FILE_NAMES):
      return str(directory)
  return None


def read_idx(path: str, ndim: int) -> np.ndarray:
  """The uint8 array [N, ...] of an IDX file (gzip-compressed when the name ends in .gz).

  Raises:
    IdxFileError: the file cannot be decompressed, has the wrong magic number or dimension
      count, or holds more or fewer bytes than its header says.
  """
  try:
    with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise IdxFileError(f'{path} is not a readable IDX file ({e}); replace it with an intact '
                       f'copy ({INSTALL_HINT} reinstalls them).') from e
  magic = int.from_bytes(raw[:4], 'big') if len(raw) >= 4 else None
  if magic != _MAGIC[ndim] or len(raw) < 4 + 4 * ndim:
    raise IdxFileError(f'{path} is not a {ndim}-dimensional uint8 IDX file (magic number '
                       f'{magic!r}, expected {_MAGIC[ndim]}); replace it with an intact copy '
                       f'({INSTALL_HINT} reinstalls them).')
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  body = raw[4 + 4 * ndim:]
  if len(body) != int(np.prod(shape)):
    raise IdxFileError(f'{path} is truncated or padded: its header promises {shape} = '
                       f'{int(np.prod(shape))} bytes of data but it holds {len(body)}; replace '
                       f'it with an intact copy ({INSTALL_HINT} reinstalls them).')
  return np.frombuffer(body, np.uint8).reshape(shape)


def read_split(directory: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28, 1], labels int64 [N]) of `split` from the IDX files in
  `directory`, checked against each other.

  Raises:
    IdxFileError: a file is missing, corrupt, truncated or inconsistent with its partner.
  """
  paths = []
  for name in FILES[split]:
    path = _locate(directory, name)
    if path is None:
      raise IdxFileError(f'{os.path.join(directory, name)} is missing; place the four '
                         f'Fashion-MNIST IDX files ({", ".join(FILE_NAMES)}) there or '
                         f'{INSTALL_HINT}.')
    paths.append(path)
  images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
  if images.shape[1:] != (28, 28):
    raise IdxFileError(f'{paths[0]} holds images of {images.shape[1:]} pixels, not 28x28; it is '
                       'not a Fashion-MNIST file.')
  if len(images) != len(labels):
    raise IdxFileError(f'{paths[0]} holds {len(images)} images but {paths[1]} holds '
                       f'{len(labels)} labels; replace them with an intact pair.')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise IdxFileError(f'{paths[1]} holds label {int(labels.max())}, outside 0..9; it is not a '
                       'Fashion-MNIST label file.')
  return images[..., None], labels.astype(np.int64)


def missing_message(name: str, data_dir_root: str, searched: Sequence[str]) -> str:
  """One sentence: the dataset is not prepared, where the files were looked for, both fixes."""
  manual = searched[0]
  return (f'dataset {name!r} is not prepared in data_dir {data_dir_root!r} and its four IDX '
          f'files ({", ".join(FILE_NAMES)}) are in none of {list(searched)}; install them with '
          f'`{INSTALL_HINT}` or place them in {manual!r} (or set dataset.data_dir to a directory '
          'that holds them).')


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from the four original IDX files in the manual directory."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train and test splits of the original IDX files, in file order.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {", ".join(FILE_NAMES)} (from {HOMEPAGE}, or `{INSTALL_HINT}`, which installs them '
      f'in {DEBIAN_DIR}) in the manual_dir.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage=HOMEPAGE,
        disable_shuffling=True,  # Keep the files' order.
    )

  def _split_generators(self, dl_manager):
    directory = str(dl_manager.manual_dir)
    # Read and check every file before TFDS writes anything.
    data = {split: read_split(directory, split) for split in FILES}
    return {split: self._generate_examples(*arrays) for split, arrays in data.items()}

  def _generate_examples(self, images, labels) -> Iterable[Tuple[int, Dict[str, object]]]:
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}
