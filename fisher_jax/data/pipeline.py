"""The input pipeline (TFDS + tf.data): `make_input(config.dataset, ...)` -> an `Input`.

Datasets that fit in memory (digits, CIFAR, TinyImageNet, downsampled ImageNet) are decoded once
into uint8 arrays held in TensorFlow variables, and every batch is a gather from them:

* training: the global batch of step s is rows [(s mod S) B, (s mod S + 1) B) of the epoch's
  permutation (S = steps per epoch, epoch = s // S), a stateless `index_shuffle` seeded by
  (seed, epoch); process p keeps rows [p b, (p + 1) b) of it (b = B / process_count). The random
  crop and flip of `dataset.augment` are drawn for the whole global batch from (seed, step). So
  the data a step sees is a function of (seed, step) alone -- the same for 1 or many processes,
  and `train_iterator(s)` starts at step s at no cost (`tf.data.Dataset.range(s, ...)`).
* evaluation: the split is cut into `process_count` contiguous, disjoint shards; each process
  pads its shard to the common number of batches, with `mask` 0 on the padding rows, so every
  example counts exactly once across processes.

`imagenet2012` is too big for memory and is streamed instead (`streaming.StreamingInput`): each process
reads its own file shard (`tfds.split_for_jax_process`) with its own shuffle, so its training
batches depend on the process count (evaluation still counts every example exactly once).

The `val` split is carved from the training split by a FIXED seed (the same validation set in
every run) when the dataset has no validation split of its own and `dataset.val_fraction` > 0;
`dataset.train_subset` keeps a fixed subset of the remaining training examples; then
`dataset.label_noise` corrupts a fraction of the labels used for training, fixed by `seed`.
"""

import collections
import dataclasses
import os
from typing import Any, Dict, Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fisher_jax.data import augment as augment_lib
from fisher_jax.data import base
from fisher_jax.training import fields
from fisher_jax.training import quiet
from fisher_jax.data import digits as _digits  # noqa: F401  (registers the TFDS builder)
from fisher_jax.data import fashion_mnist as fashion_mnist_lib  # (registers the TFDS builder)
from fisher_jax.data import label_noise as label_noise_lib
from fisher_jax.data import specs as specs_lib
from fisher_jax.data import streaming
from fisher_jax.data import synthetic as _synthetic  # noqa: F401  (registers builder and specs)
from fisher_jax.data import tiny_imagenet as _tiny_imagenet  # noqa: F401  (registers builder)

SUBSET_KINDS = ('all', 'clean', 'noisy')
_CARVE_SEED = 0  # Fixed: the validation set and the training subset are the same in all runs.
_SALT_SHUFFLE = 1
_SALT_AUGMENT = 2
_SALT_SUBSET = 3
_NO_END = 2**62  # "infinite" step range

try:  # TensorFlow only feeds the host: keep it off accelerators JAX uses (full TF builds).
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF devices already initialized by the caller; leave them.
  pass


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not prepared in the data_dir searched (nothing is downloaded)."""


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
  """The validated fields of `config.dataset` (see configs/default.py for their meanings and
  defaults, which live there only): made by `read_settings`."""
  name: str
  data_dir: Optional[str]
  label_noise: float
  augment: bool
  val_fraction: float
  train_subset: Optional[int]


def read_settings(dataset_config) -> DatasetSettings:
  """Validates `config.dataset` (a ConfigDict, dict or object with every field of
  configs/default.py's `config.dataset`).

  Raises:
    ValueError: a missing field, an unknown name or an impossible value, naming the field and
      what is allowed.
  """
  get = lambda field: fields.required(dataset_config, field, 'dataset.')  # noqa: E731
  name = get('name')
  specs_lib.get_spec(name)  # Unknown names fail here.
  data_dir = get('data_dir')
  label_noise = float(get('label_noise') or 0.0)
  if not 0.0 <= label_noise < 1.0:
    raise ValueError(f'dataset.label_noise={label_noise} is out of range; use a fraction in '
                     '[0, 1).')
  val_fraction = float(get('val_fraction') or 0.0)
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'dataset.val_fraction={val_fraction} is out of range; use a fraction in '
                     '[0, 1).')
  augment = get('augment')
  if not isinstance(augment, (bool, np.bool_)):
    raise ValueError(f'dataset.augment={augment!r} is not a boolean; use True or False.')
  train_subset = get('train_subset')
  if train_subset in (None, 0):
    train_subset = None
  elif isinstance(train_subset, (bool, float)) or int(train_subset) != train_subset \
      or train_subset < 0:
    raise ValueError(f'dataset.train_subset={train_subset!r} is invalid; use a positive '
                     'number of examples, or None (or 0) for the whole training set.')
  else:
    train_subset = int(train_subset)
  return DatasetSettings(name=name, data_dir=None if data_dir in (None, '') else str(data_dir),
                         label_noise=label_noise, augment=bool(augment),
                         val_fraction=val_fraction, train_subset=train_subset)


# ---------------------------------------------------------------------------------------------
# Finding (or, for the offline datasets, preparing) the TFDS data.


def _manual_dir(builder) -> str:
  return os.path.join(str(builder.data_dir_root), 'downloads', 'manual')


def _manual_files(spec):
  return [f for f in (spec.manual_file or '').replace(' and ', ', ').split(', ') if f]


def missing_dataset_message(spec: specs_lib.DatasetSpec, builder) -> str:
  """One sentence: the dataset, the data_dir searched and how to prepare it."""
  root = str(builder.data_dir_root)
  where = (f'dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared in data_dir '
           f'{root!r} (looked for {str(builder.data_dir)!r})')
  ours = type(builder).__module__.startswith('fisher_jax.')
  tfds_cmd = (f'`tfds build {spec.tfds_name}{" --imports=fisher_jax.data" if ours else ""} '
              f'--data_dir={root}`')
  our_cmd = f'`python -m fisher_jax.data.prepare {spec.name} --data_dir={root}`'
  if spec.prepare == specs_lib.PREPARE_MANUAL:
    then = '(the next run prepares it) or' if spec.prepare_on_first_use else 'and'
    return (f'{where}; place {spec.manual_file} (from {spec.homepage}) in '
            f'{_manual_dir(builder)!r} {then} run {our_cmd} (or {tfds_cmd}), or set '
            'dataset.data_dir to where it is prepared.')
  return (f'{where}; prepare it on a machine with network access with {our_cmd} (or '
          f'{tfds_cmd}) and copy that folder here if needed, or set dataset.data_dir to where '
          'it is prepared.')


def prepared_builder(spec: specs_lib.DatasetSpec, data_dir: Optional[str] = None):
  """The TFDS builder of `spec` with its data on disk; never downloads.

  The embedded digits are prepared offline on first use; a dataset built from a manual archive
  (TinyImageNet) is prepared on first use when the archive is in `<data_dir>/downloads/manual`.

  TFDS's own messages while it prepares a dataset (progress bars, 'Downloading and preparing
  dataset ...') stay off the console unless INFO logs are shown (`quiet.dataset_preparation`).

  Raises:
    DatasetNotPreparedError: the data is not there, with `missing_dataset_message`.
  """
  with quiet.dataset_preparation():
    return _prepared_builder(spec, data_dir)


def _prepared_builder(spec: specs_lib.DatasetSpec, data_dir: Optional[str]):
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if spec.prepare == specs_lib.PREPARE_LOCAL:
    return _local_builder(spec, data_dir)
  manual_ready = (spec.prepare == specs_lib.PREPARE_MANUAL and spec.prepare_on_first_use
                  and all(os.path.exists(os.path.join(_manual_dir(builder), f))
                          for f in _manual_files(spec)))
  if spec.prepare == specs_lib.PREPARE_AUTO or manual_ready:
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
      builder.download_and_prepare(download_config=config)
    except ModuleNotFoundError as e:
      if e.name != 'importlib_resources':
        raise
      raise ModuleNotFoundError(  # TFDS uses it without declaring it: tensorflow/datasets#11212
          f'preparing dataset {spec.name!r} needs importlib_resources; run `pip install '
          'importlib_resources`.', name=e.name) from e
    except Exception:  # Another process may have prepared it concurrently.
      builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
      if not builder.is_prepared():
        raise
    return tfds.builder(spec.tfds_name, data_dir=data_dir)
  raise DatasetNotPreparedError(missing_dataset_message(spec, builder))


def _local_builder(spec: specs_lib.DatasetSpec, data_dir: Optional[str]):
  """Our builder `spec.local_tfds_name`, prepared on first use from the original files found in
  the manual directory, `data_dir` itself or one of `spec.source_dirs` (fashion_mnist)."""
  builder = tfds.builder(spec.local_tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  searched = [_manual_dir(builder)] + ([data_dir] if data_dir else []) + list(spec.source_dirs)
  source = fashion_mnist_lib.find_source_dir(searched)
  if source is None:
    raise DatasetNotPreparedError(fashion_mnist_lib.missing_message(
        spec.name, str(builder.data_dir_root), searched))
  config = tfds.download.DownloadConfig(manual_dir=source, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except fashion_mnist_lib.IdxFileError:
    raise
  except Exception:  # Another process may have prepared it concurrently.
    if not tfds.builder(spec.local_tfds_name, data_dir=data_dir).is_prepared():
      raise
  return tfds.builder(spec.local_tfds_name, data_dir=data_dir)


_CACHE_BYTES = 512 << 20  # decoded splits kept per process, so repeated runs skip decoding
_cache: 'collections.OrderedDict[tuple, tuple]' = collections.OrderedDict()


def load_split(builder, split: str):
  """Decodes a whole split: (images uint8 [N, H, W, C], labels int32 [N]) in TFDS order.

  Splits are kept (read-only) in a per-process cache of at most 512 MB, so making the input
  again (tests, several runs in one process) does not decode them again.
  """
  key = (str(builder.data_dir), str(split))
  if key in _cache:
    _cache.move_to_end(key)
    return _cache[key]
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  images, labels = data['image'], np.asarray(data['label'], np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  if images.nbytes <= _CACHE_BYTES:
    _cache[key] = (images, labels)
    while sum(v[0].nbytes for v in _cache.values()) > _CACHE_BYTES:
      _cache.popitem(last=False)
  return images, labels


# ---------------------------------------------------------------------------------------------
# The in-memory input.


@dataclasses.dataclass
class _Split:
  """An eval or train split as rows of a held image array."""
  images: tf.Variable  # uint8 [N_all, H, W, C]
  rows: tf.Variable    # int64 [n], rows of `images` in this split, in split order
  labels: tf.Variable  # int32 [n]
  size: int


def _variable(array, dtype=None):
  return tf.Variable(np.asarray(array, dtype), trainable=False)


class Input(base.InputBase):
  """The in-memory input of one process. See the module docstring and `make_input`.

  Attributes (besides `InputBase`'s):
    train_labels: int32 [num_train], the labels trained on (noisy where `is_noisy`).
    true_train_labels: int32 [num_train], the dataset's labels.
    is_noisy: bool [num_train], which labels dataset.label_noise replaced.
  """

  def __init__(self, spec, settings, builder, **kwargs):
    super().__init__(spec, settings, **kwargs)
    self._subsets = {}
    images, labels = load_split(builder, spec.train_split)
    self._check_images(images, spec.train_split)
    pool = np.arange(len(labels))
    val_rows = None
    if spec.val_split is None and settings.val_fraction > 0:
      num_val = int(round(settings.val_fraction * len(labels)))
      if not 1 <= num_val < len(labels):
        raise ValueError(f'dataset.val_fraction={settings.val_fraction} carves {num_val} of the '
                         f'{len(labels)} training examples of {spec.name!r}; use a fraction that '
                         'leaves at least one example on each side.')
      perm = np.random.default_rng(_CARVE_SEED).permutation(len(labels))
      val_rows, pool = np.sort(perm[:num_val]), np.sort(perm[num_val:])
    if settings.train_subset is not None:
      if settings.train_subset > len(pool):
        raise ValueError(f'dataset.train_subset={settings.train_subset} exceeds the {len(pool)} '
                         f'training examples of {spec.name!r} (after the validation '
                         f'carve-out); use at most {len(pool)}, or None for all.')
      keep = np.random.default_rng([_CARVE_SEED, _SALT_SUBSET]).permutation(len(pool))
      pool = np.sort(pool[keep[:settings.train_subset]])
    self._set_num_train(len(pool))
    self.true_train_labels = labels[pool]
    if settings.label_noise > 0:
      self.train_labels, self.is_noisy = label_noise_lib.corrupt_labels(
          self.true_train_labels, spec.num_classes, settings.label_noise, self.seed)
    else:
      self.train_labels = self.true_train_labels.copy()
      self.is_noisy = np.zeros(self.num_train, bool)

    train_images = _variable(images)
    del images
    self._train = _Split(train_images, _variable(pool, np.int64),
                         _variable(self.train_labels, np.int32), self.num_train)
    self._eval = {}
    if val_rows is not None:
      self._eval['val'] = _Split(train_images, _variable(val_rows, np.int64),
                                 _variable(labels[val_rows], np.int32), len(val_rows))
    elif spec.val_split is not None:
      self._eval['val'] = self._held_split(builder, spec.val_split)
    self._eval['test'] = self._held_split(builder, spec.test_split)
    self._eval[base.TRAIN_EVAL_SPLIT] = self._train
    self._split_sizes = {k: v.size for k, v in self._eval.items()}

  def _check_images(self, images, split):
    if tuple(images.shape[1:]) != tuple(self.spec.image_shape):
      raise ValueError(f'dataset {self.spec.name!r} split {split!r} has images of shape '
                       f'{tuple(images.shape[1:])}, not the spec\'s {self.spec.image_shape}; '
                       'fix the DatasetSpec.image_shape.')

  def _held_split(self, builder, split):
    images, labels = load_split(builder, split)
    self._check_images(images, split)
    return _Split(_variable(images), _variable(np.arange(len(labels)), np.int64),
                  _variable(labels, np.int32), len(labels))

  def _normalize(self, images):
    return augment_lib.normalize(images, self.spec.mean, self.spec.std)

  def _train_dataset(self, start_step: int) -> tf.data.Dataset:
    spec, data = self.spec, self._train
    global_batch, local_batch = self.batch_size, self.local_batch_size
    steps = self.steps_per_epoch
    first_row = self.process_index * local_batch
    max_index = tf.constant(self.num_train - 1, tf.int64)
    shuffle_seed = tf.constant([self.seed, _SALT_SHUFFLE], tf.int64)
    augment_seed = tf.constant([self.seed, _SALT_AUGMENT], tf.int64)
    do_augment = self.settings.augment

    def batch_at(step):
      epoch = step // steps
      positions = (step % steps) * global_batch + first_row + tf.range(local_batch,
                                                                       dtype=tf.int64)
      order = tf.random.experimental.index_shuffle(
          positions, tf.random.experimental.stateless_fold_in(shuffle_seed, epoch), max_index)
      images = tf.gather(data.images, tf.gather(data.rows, order))
      if do_augment:
        offsets, flips = augment_lib.draw_crop_flip(
            tf.random.experimental.stateless_fold_in(augment_seed, step), global_batch,
            spec.crop_padding, spec.flip)
        rows = slice(first_row, first_row + local_batch)
        images = augment_lib.crop_and_flip(images, offsets[rows], flips[rows], spec.crop_padding)
      return {'image': self._normalize(images), 'label': tf.gather(data.labels, order)}

    ds = tf.data.Dataset.range(start_step, _NO_END)
    ds = ds.map(tf.autograph.experimental.do_not_convert(batch_at),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  def train_iterator(self, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Infinite training batches; the k-th is global step (start_step + k)'s, this process's rows.

    Yields:
      dict image float32 [b, H, W, C] (normalized, augmented if dataset.augment), label int32
      [b] (the trained, possibly noisy, labels); b = batch_size // process_count.
    """
    return self._train_dataset(int(start_step)).as_numpy_iterator()

  def eval_iterator(self, split: str, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
    """This process's shard of `split`, padded to the common number of batches.

    Args:
      split: 'val', 'test' or 'train_full' (the training set used, unaugmented, against the
        labels trained on).
      batch_size: the GLOBAL eval batch size; each process gets batch_size // process_count
        rows per batch.

    Yields:
      dict image float32 [b, H, W, C] (normalized, zeros on padding), label int32 [b] (true
      labels, the trained ones for 'train_full'; 0 on padding), mask float32 [b] (1 for a real example, 0 for padding). Across all
      processes every example of the split appears exactly once with mask 1.
    """
    local = self._local_eval_batch(batch_size)
    self._check_split(split)
    data = self._eval[split]
    num_batches = self.num_eval_batches(split, batch_size)
    start, end = base.even_shard(data.size, self.process_index, self.process_count)

    def batch_at(index):
      positions = start + index * local + tf.range(local, dtype=tf.int64)
      mask = positions < end
      safe = tf.where(mask, positions, 0)
      images = self._normalize(tf.gather(data.images, tf.gather(data.rows, safe)))
      mask_f = tf.cast(mask, tf.float32)
      return {'image': images * mask_f[:, None, None, None],
              'label': tf.where(mask, tf.gather(data.labels, safe), 0),
              'mask': mask_f}

    ds = tf.data.Dataset.range(num_batches)
    ds = ds.map(tf.autograph.experimental.do_not_convert(batch_at),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  def fixed_subset(self, num_examples: int, kind: str = 'all') -> Dict[str, np.ndarray]:
    """A fixed set of training examples for measurements (the same in every process).

    Args:
      num_examples: how many; fewer when the training set has fewer of that kind.
      kind: 'all' (any used training example), 'clean' (labels untouched) or 'noisy' (labels
        corrupted by dataset.label_noise).

    Returns:
      dict image float32 [n, H, W, C] (normalized, not augmented), label int32 [n] (the trained
      labels), fixed by the seed.
    """
    if kind not in SUBSET_KINDS:
      raise ValueError(f'kind={kind!r} is unknown; choose one of {list(SUBSET_KINDS)}.')
    key = (int(num_examples), kind)
    if key not in self._subsets:
      candidates = {'all': np.arange(self.num_train), 'clean': np.flatnonzero(~self.is_noisy),
                    'noisy': np.flatnonzero(self.is_noisy)}[kind]
      if kind == 'noisy' and not len(candidates):
        raise ValueError("fixed_subset(kind='noisy') needs noisy labels; set "
                         'dataset.label_noise > 0.')
      rng = np.random.default_rng([self.seed, _SALT_SUBSET, SUBSET_KINDS.index(kind)])
      chosen = np.sort(rng.permutation(candidates)[:num_examples])
      rows = tf.gather(self._train.rows, chosen)
      images = self._normalize(tf.gather(self._train.images, rows)).numpy()
      self._subsets[key] = {'image': images, 'label': self.train_labels[chosen]}
    return {k: v.copy() for k, v in self._subsets[key].items()}


def make_input(dataset_config, *, batch_size: int, seed: int,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> Any:
  """The input of a run: the `Input` of `config.dataset` for this process.

  Args:
    dataset_config: the validated `DatasetSettings`, or `config.dataset` with every field
      (name, data_dir, label_noise, augment, val_fraction, train_subset; validated here by
      `read_settings`, a missing one named).
    batch_size: the global training batch size B.
    seed: the run's seed (data order, augmentation, label noise, fixed subsets).
    process_index: this process; None means `jax.process_index()`.
    process_count: how many processes read; None means `jax.process_count()`.

  Raises:
    ValueError: invalid config values (the field and the allowed values are named).
    DatasetNotPreparedError: the dataset is not prepared in the data_dir searched.
  """
  settings = (dataset_config if isinstance(dataset_config, DatasetSettings)
              else read_settings(dataset_config))
  spec = specs_lib.get_spec(settings.name)
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count}).')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} is not a positive multiple of the '
                     f'{process_count} processes; use a multiple of {process_count}.')
  seed = int(seed)
  if seed < 0:
    raise ValueError(f'seed={seed} is negative; use a non-negative integer.')
  builder = prepared_builder(spec, settings.data_dir)
  kwargs = dict(batch_size=batch_size, seed=seed, process_index=process_index,
                process_count=process_count)
  if spec.in_memory:
    return Input(spec, settings, builder, **kwargs)
  return streaming.StreamingInput(spec, settings, builder, **kwargs)
