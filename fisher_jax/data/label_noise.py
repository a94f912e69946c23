"""Symmetric label noise: a fixed fraction of the training labels replaced by another class."""

from typing import Tuple

import numpy as np

_SALT = 0x6C6E  # separates this stream from the other uses of the seed


def corrupt_labels(labels: np.ndarray, num_classes: int, fraction: float,
                   seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Replaces the labels of round(fraction * N) examples by a different class.

  The noisy examples are a uniformly random subset of that size, and each gets a class drawn
  uniformly from the C - 1 classes other than its true one (true label plus a uniform shift in
  [1, C - 1], modulo C). Both choices are fixed by `seed`.

  Args:
    labels: int [N], the true labels in [0, num_classes).
    num_classes: C >= 2.
    fraction: q in [0, 1).
    seed: non-negative integer.

  Returns:
    (noisy labels int32 [N], is_noisy bool [N]); noisy labels differ from `labels` exactly
    where `is_noisy`.
  """
  labels = np.asarray(labels, np.int32)
  num = labels.shape[0]
  num_noisy = int(round(fraction * num))
  rng = np.random.default_rng([int(seed), _SALT])
  which = rng.choice(num, size=num_noisy, replace=False)
  shift = rng.integers(1, num_classes, size=num_noisy)
  noisy = labels.copy()
  noisy[which] = (labels[which] + shift) % num_classes
  is_noisy = np.zeros(num, bool)
  is_noisy[which] = True
  return noisy, is_noisy
