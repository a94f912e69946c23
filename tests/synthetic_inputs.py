"""Helpers shared by the input-pipeline tests on the synthetic TFDS datasets (built offline)."""

import numpy as np

from configs import default
from fisher_jax import data
from fisher_jax.data import synthetic


def dataset_config(name, **fields):
  """configs/default.py's `config.dataset` (every field at its default) for dataset `name`,
  `fields` overriding: what `data.make_input` takes."""
  return dict(default.get_config().dataset.to_dict(), name=name, **fields)


def make_input(data_dir, name, batch_size=64, seed=0, process_index=0, process_count=1,
               **fields):
  """`data.make_input` of dataset `name` with the default dataset fields, `fields` overriding."""
  return data.make_input(dataset_config(name, data_dir=data_dir, **fields),
                         batch_size=batch_size, seed=seed, process_index=process_index,
                         process_count=process_count)


def example_ids(images, spec):
  """Example indices of normalized, un-augmented images [N, H, W, C] of dataset `spec`."""
  return synthetic.identify(images * np.asarray(spec.std) + np.asarray(spec.mean))


def eval_ids(inp, split, batch_size, *, spec):
  """(ids of the real examples of `split` in this process's eval batches, number of batches);
  checks the batch count, the mask's shape and that padding is zero."""
  batches = list(inp.eval_iterator(split, batch_size))
  assert len(batches) == inp.num_eval_batches(split, batch_size)
  for b in batches:
    assert b['mask'].shape == (batch_size // inp.process_count,)
    assert np.all(b['image'][b['mask'] == 0] == 0)
  ids = [example_ids(b['image'], spec)[b['mask'] == 1] for b in batches]
  return np.concatenate(ids), len(batches)


def check_two_processes_cover_eval_splits(inputs, split_sizes, spec, batch_size=32):
  """Two processes' inputs read disjoint eval shards, in equal numbers of batches, that together
  hold every example of each split once (`split_sizes`: split -> number of examples)."""
  for split, size in split_sizes.items():
    shards = [eval_ids(inp, split, batch_size, spec=spec) for inp in inputs]
    assert shards[0][1] == shards[1][1]  # the same number of batches in both processes
    ids = [set(s[0]) for s in shards]
    assert len(ids[0]) == len(shards[0][0]) and not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == size == len(shards[0][0]) + len(shards[1][0])
