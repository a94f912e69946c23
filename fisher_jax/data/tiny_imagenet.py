"""TinyImageNet (200 classes, 64x64x3) as a TFDS builder, prepared from the official zip.

Place `tiny-imagenet-200.zip` (http://cs231n.stanford.edu/tiny-imagenet-200.zip) in the manual
directory, `<data_dir>/downloads/manual/`; `make_input` then prepares it on first use (or run
`tfds build tiny_imagenet --imports=fisher_jax.data --data_dir=<data_dir>`). The archive holds
`tiny-imagenet-200/wnids.txt`, `train/<wnid>/images/*.JPEG` (500 per class) and
`val/images/*.JPEG` with labels in `val/val_annotations.txt` (50 per class); its `test` images
have no labels and are not used. Splits: `train` (100,000) and `validation` (10,000). Label i is
the i-th WordNet id of wnids.txt in sorted order. JPEG bytes are stored unchanged; grey images
are decoded to 3 channels.
"""

import io
import os
import zipfile

import tensorflow_datasets as tfds

from fisher_jax.data import builder_info

ARCHIVE = 'tiny-imagenet-200.zip'
_ROOT = 'tiny-imagenet-200/'
NUM_CLASSES = 200


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """TinyImageNet-200 from the manually placed official archive."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train and validation splits of tiny-imagenet-200.zip.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {ARCHIVE} (http://cs231n.stanford.edu/tiny-imagenet-200.zip) in the manual_dir '
      '(by default <data_dir>/downloads/manual/).')

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_info.image_classification_info(
        self, description=__doc__, image_shape=(64, 64, 3), num_classes=NUM_CLASSES,
        encoding_format='jpeg', homepage='https://www.kaggle.com/c/tiny-imagenet',
        extra_features={'file_name': tfds.features.Text()})

  def _split_generators(self, dl_manager):
    path = os.path.join(str(dl_manager.manual_dir), ARCHIVE)
    if not os.path.exists(path):
      raise AssertionError(f'{path} is missing. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {'train': self._generate_examples(path, 'train'),
            'validation': self._generate_examples(path, 'validation')}

  def _generate_examples(self, path, split):
    with zipfile.ZipFile(path) as archive:
      wnids = sorted(archive.read(_ROOT + 'wnids.txt').decode().split())
      label_of = {wnid: i for i, wnid in enumerate(wnids)}
      if split == 'validation':
        annotations = archive.read(_ROOT + 'val/val_annotations.txt').decode().splitlines()
        files = {}
        for line in annotations:
          if line.strip():
            name, wnid = line.split('\t')[:2]
            files[f'{_ROOT}val/images/{name}'] = wnid
      else:
        files = {}
        for name in archive.namelist():
          parts = name[len(_ROOT):].split('/')  # train/<wnid>/images/<file>
          if (name.startswith(_ROOT + 'train/') and len(parts) == 4 and parts[2] == 'images'
              and parts[3].upper().endswith('.JPEG')):
            files[name] = parts[1]
      for name in sorted(files):
        yield name, {'image': io.BytesIO(archive.read(name)), 'label': label_of[files[name]],
                     'file_name': os.path.basename(name)}
