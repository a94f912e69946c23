"""What every input of a run offers besides its data: splits, sizes and eval batch counts.

`pipeline.Input` (in memory) and `streaming.StreamingInput` (streamed) both derive from
`InputBase`; this module imports neither, so the two input modules do not import each other.
"""

import math

EVAL_SPLITS = ('val', 'test')
# The whole training set (after the validation carve-out and subset) in evaluation mode, against
# the labels trained on: what a fit target (`config.stop`) reads. Not one of EVAL_SPLITS: the loop
# evaluates it only when a fit target is set.
TRAIN_EVAL_SPLIT = 'train_full'


def even_shard(size: int, index: int, count: int):
  """[start, end) of shard `index` of `count` contiguous shards (sizes differ by at most 1)."""
  return index * size // count, (index + 1) * size // count


class InputBase:
  """What every input offers besides its data: splits, sizes and eval batch counts.

  Attributes:
    spec: the `DatasetSpec`.
    settings: the validated `DatasetSettings`.
    batch_size: the global training batch size B.
    local_batch_size: b = B // process_count, the rows each process gets.
    process_index, process_count: this process and how many read.
    seed: the run's seed.
    num_train: examples in the training set used (after val carve-out and subset).
    steps_per_epoch: num_train // B (the last partial batch of an epoch is dropped).
  """

  def __init__(self, spec, settings, *, batch_size, seed, process_index, process_count):
    self.spec = spec
    self.settings = settings
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.process_index = process_index
    self.process_count = process_count
    self.seed = seed
    self.num_train = 0
    self.steps_per_epoch = 0
    # 'val' / 'test' / TRAIN_EVAL_SPLIT -> examples, for the splits that exist
    self._split_sizes = {}

  def _set_num_train(self, num_train):
    self.num_train = num_train
    self.steps_per_epoch = num_train // self.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'batch_size={self.batch_size} exceeds the {num_train} training examples '
                       f'of {self.spec.name!r}; use a batch_size of at most {num_train}.')

  def has_split(self, split: str) -> bool:
    """Whether `eval_iterator(split, ...)` has data ('val' needs val_fraction > 0 or a split;
    TRAIN_EVAL_SPLIT needs an in-memory dataset)."""
    if split not in EVAL_SPLITS + (TRAIN_EVAL_SPLIT,):
      raise ValueError(f'split={split!r} is unknown; choose one of '
                       f'{list(EVAL_SPLITS + (TRAIN_EVAL_SPLIT,))}.')
    return split in self._split_sizes

  def _check_split(self, split):
    if not self.has_split(split):
      raise ValueError(f'dataset {self.spec.name!r} has no {split!r} split; set '
                       'dataset.val_fraction > 0 to carve one from the training set.')

  def num_examples(self, split: str) -> int:
    """Examples in 'train' (the set used), 'val' or 'test' (all processes together)."""
    if split == 'train':
      return self.num_train
    self._check_split(split)
    return self._split_sizes[split]

  def _shard_size(self, split: str, process_index: int) -> int:
    start, end = even_shard(self._split_sizes[split], process_index, self.process_count)
    return end - start

  def _local_eval_batch(self, batch_size):
    if batch_size <= 0 or batch_size % self.process_count:
      raise ValueError(f'eval batch_size={batch_size} is not a positive multiple of the '
                       f'{self.process_count} processes; use a multiple of {self.process_count}.')
    return batch_size // self.process_count

  def num_eval_batches(self, split: str, batch_size: int) -> int:
    """Batches `eval_iterator(split, batch_size)` yields (the same in every process)."""
    local = self._local_eval_batch(batch_size)
    self._check_split(split)
    largest = max(self._shard_size(split, p) for p in range(self.process_count))
    return max(1, math.ceil(largest / local))
