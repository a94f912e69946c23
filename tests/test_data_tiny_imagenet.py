"""The TinyImageNet builder on a small archive in the official layout, generated here.

Each image is one flat colour (JPEG keeps flat colours almost exactly), so an image's mean
colour identifies it; one training image is greyscale, as some official ones are.
"""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from fisher_jax import data

import synthetic_inputs  # tests/synthetic_inputs.py

WNIDS = ['n09999999', 'n01443537', 'n05555555']  # wnids.txt order; labels follow sorted order
SPEC = data.get_spec('tiny_imagenet')


def _jpeg(color, grey=False):
  mode, value = ('L', color[0]) if grey else ('RGB', tuple(color))
  out = io.BytesIO()
  Image.new(mode, (64, 64), value).save(out, format='JPEG', quality=95)
  return out.getvalue()


def _write_archive(path):
  """Writes the archive; returns {colour tuple: (split, label)}."""
  truth = {}
  k = 0
  with zipfile.ZipFile(path, 'w') as z:
    root = 'tiny-imagenet-200/'
    z.writestr(root + 'wnids.txt', '\n'.join(WNIDS) + '\n')
    z.writestr(root + 'words.txt', ''.join(f'{w}\tthing {w}\n' for w in WNIDS))
    for wnid in WNIDS:
      boxes = []
      for i in range(4):
        k += 1
        grey = wnid == WNIDS[0] and i == 0
        color = (10 * k,) * 3 if grey else (10 * k, 255 - 10 * k, (37 * k) % 256)
        name = f'{wnid}_{i}.JPEG'
        z.writestr(f'{root}train/{wnid}/images/{name}', _jpeg(color, grey))
        boxes.append(f'{name}\t0\t0\t63\t63')
        truth[color] = ('train', sorted(WNIDS).index(wnid))
      z.writestr(f'{root}train/{wnid}/{wnid}_boxes.txt', '\n'.join(boxes))
    annotations = []
    for j, wnid in enumerate(WNIDS * 2):
      k += 1
      color = (10 * k, 255 - 10 * k, (37 * k) % 256)
      z.writestr(f'{root}val/images/val_{j}.JPEG', _jpeg(color))
      annotations.append(f'val_{j}.JPEG\t{wnid}\t0\t0\t63\t63')
      truth[color] = ('validation', sorted(WNIDS).index(wnid))
    z.writestr(root + 'val/val_annotations.txt', '\n'.join(annotations) + '\n')
    z.writestr(root + 'test/images/test_0.JPEG', _jpeg((1, 2, 3)))
  return truth


def _colors(images):
  raw = images * np.asarray(SPEC.std) + np.asarray(SPEC.mean)
  return raw.mean(axis=(1, 2))  # [N, 3]


def _match(colors, truth):
  """Index of the nearest true colour for each image; asserts it is within JPEG error."""
  keys = np.asarray(list(truth))
  dist = np.abs(colors[:, None, :] - keys[None]).max(-1)
  assert np.all(dist.min(1) < 4), dist.min(1)
  return [tuple(keys[i]) for i in dist.argmin(1)]


def test_tiny_imagenet_prepares_from_the_manual_archive(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  os.makedirs(manual)
  truth = _write_archive(str(manual / 'tiny-imagenet-200.zip'))
  inp = data.make_input(synthetic_inputs.dataset_config('tiny_imagenet', data_dir=str(tmp_path),
                                                      val_fraction=0.25),
                        batch_size=3, seed=0, process_index=0, process_count=1)
  assert (inp.num_train, inp.num_examples('val'), inp.num_examples('test')) == (9, 3, 6)
  train = inp.fixed_subset(100)
  assert train['image'].shape == (9, 64, 64, 3) and train['image'].dtype == np.float32
  val = next(inp.eval_iterator('val', 3))
  colors = _match(np.concatenate([_colors(train['image']), _colors(val['image'])]), truth)
  assert len(set(colors)) == 12  # every training image once, train and val disjoint
  assert all(truth[c][0] == 'train' for c in colors)
  np.testing.assert_array_equal(np.concatenate([train['label'], val['label']]),
                                [truth[c][1] for c in colors])
  grey = [i for i, c in enumerate(colors[:9]) if c[0] == c[1] == c[2]]
  assert len(grey) == 1  # the grey JPEG decodes to three equal channels
  raw = train['image'][grey[0]] * np.asarray(SPEC.std) + np.asarray(SPEC.mean)
  np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-3)
  test = next(inp.eval_iterator('test', 12))
  real = test['mask'] == 1
  assert real.sum() == 6
  test_colors = _match(_colors(test['image'][real]), truth)
  assert all(truth[c][0] == 'validation' for c in test_colors) and len(set(test_colors)) == 6
  np.testing.assert_array_equal(test['label'][real], [truth[c][1] for c in test_colors])
  batch = next(inp.train_iterator(0))
  assert batch['image'].shape == (3, 64, 64, 3) and set(batch['label']) <= {0, 1, 2}


def test_the_builder_refuses_a_missing_archive(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('tiny_imagenet', data_dir=str(tmp_path))
  with pytest.raises(AssertionError, match='tiny-imagenet-200.zip'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
