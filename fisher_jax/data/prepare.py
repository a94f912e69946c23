"""Prepares a registered dataset into a TFDS data_dir (downloading it if it must).

  python -m fisher_jax.data.prepare cifar10 --data_dir=/data/tfds
  python -m fisher_jax.data.prepare tiny_imagenet --data_dir=/data/tfds --manual_dir=/downloads

The same as `tfds build <tfds name> --data_dir=...`, with our own builders registered and
without the `tfds` command line's apache-beam requirement (tensorflow/datasets#5463). Manual
archives (TinyImageNet, ImageNet) are read from --manual_dir, by default
<data_dir>/downloads/manual. Fashion-MNIST is built offline from its four IDX files, found as
`make_input` finds them (docs/data.md) or in --manual_dir.
"""

import argparse
import sys
from typing import Optional

from fisher_jax.data import pipeline as _pipeline  # noqa: F401  (registers our builders)
from fisher_jax.data import specs as specs_lib

def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """Downloads (if needed) and prepares dataset `name`; returns the TFDS builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = specs_lib.get_spec(name)
  if spec.prepare == specs_lib.PREPARE_LOCAL and manual_dir is None:
    return _pipeline.prepared_builder(spec, data_dir)  # Offline, from the local files.
  if spec.prepare == specs_lib.PREPARE_LOCAL:
    builder = tfds.builder(spec.local_tfds_name, data_dir=data_dir)
  else:
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('name', choices=specs_lib.available_datasets(), help='dataset.name')
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir (default: TFDS default)')
  parser.add_argument('--manual_dir', default=None,
                      help='where manual archives are (default: <data_dir>/downloads/manual)')
  args = parser.parse_args(argv)
  builder = prepare(args.name, args.data_dir, args.manual_dir)
  print(f'{args.name}: prepared in {builder.data_dir}')


if __name__ == '__main__':
  sys.exit(main())
