"""Whole-dataset curvature: any measurement over an iterable of batches, with error bars.

One batch of 128 says little about a large model's curvature (PyHessian #5: a top eigenvalue
anywhere from 159 to 1587 on ResNet-34). `over_batches` runs a measurement on each batch of an
iterator (a dataloader, a tf.data pipeline, a list of dicts) and combines the results on the
host:

    mean = Σ_b w_b m_b,   w_b = n_b / Σ_b n_b   (weights='examples'; 1/K for 'batches'),

for K batches with n_b examples and values m_b. For a measurement that is a mean over the
batch's examples (Tr(F), diag F, the mean loss, ...) this is exactly the value on all the
examples at once. The standard error across batches treats the batches as independent draws:

    SE² = K/(K−1) Σ_b w_b² (m_b − mean)²

(std/√K for equal weights). It contains the data-sampling noise and, for a stochastic
measurement (Hutchinson probes, sampled labels), the probe noise too. When the measurement
returns its own standard error s_b (as `hessian_trace` does), the probe part is
SE_probe² = Σ_b w_b² s_b² (independent probes per batch) and the data part is
SE_data² = max(SE² − SE_probe², 0).
"""

from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import numpy as np

WEIGHTS = ('examples', 'batches')


class DatasetEstimate(NamedTuple):
  """The result of `over_batches`; values are pytrees like the measurement's (float64 numpy).

  Attributes:
    mean: the weighted mean over batches.
    standard_error: SE across batches (data and, if any, probe noise together).
    probe_standard_error: the probe part (None unless the measurement returns standard errors).
    data_standard_error: the between-batch part left after the probe part (None likewise).
    num_examples: examples seen (Σ_b n_b).
    num_batches: K.
  """
  mean: Any
  standard_error: Any
  probe_standard_error: Optional[Any]
  data_standard_error: Optional[Any]
  num_examples: int
  num_batches: int


def _batch_size(batch) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves or not np.ndim(leaves[0]):
    raise ValueError('over_batches needs batches of arrays with a leading example axis; got '
                     f'{type(batch).__name__} without one.')
  return int(np.shape(leaves[0])[0])


def over_batches(measure: Callable, batches: Iterable, *, weights: str = 'examples',
                 with_stderr: bool = False, rng: Optional[jax.Array] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> DatasetEstimate:
  """Mean of `measure(batch)` over an iterable of batches, with a standard error across them.

  Args:
    measure: `measure(batch)` (or `measure(batch, rng)` when `rng` is given) -> a pytree of
      scalars or arrays, typically a jitted function; with `with_stderr`, a pair
      `(estimate, standard_error)` of two such pytrees (what `hessian_trace` returns).
    batches: an iterable of batches (pytrees of arrays sharing a leading example axis; the
      first leaf's length is the batch's example count).
    weights: 'examples' (each batch weighted by its example count: the mean over all examples)
      or 'batches' (equal weights).
    with_stderr: the measurement returns `(estimate, standard_error)`; the probe part of the
      error is then reported separately (see the module docstring).
    rng: if given, batch b is measured with `jax.random.fold_in(rng, b)` (independent probes or
      sampled labels per batch).
    progress: called as `progress(batches_done, examples_done)` after each batch.

  Returns:
    A `DatasetEstimate`. With one batch the standard errors are NaN (no spread to measure).

  Raises:
    ValueError: unknown `weights`, an empty iterable, or a batch without an example axis.
  """
  if weights not in WEIGHTS:
    raise ValueError(f'weights={weights!r} is unknown; choose one of {list(WEIGHTS)}.')
  counts, values, errors = [], [], []
  treedef = None
  for index, batch in enumerate(batches):
    out = measure(batch) if rng is None else measure(batch, jax.random.fold_in(rng, index))
    if with_stderr:
      out, err = out
      errors.append([np.asarray(x, np.float64) for x in jax.tree.leaves(err)])
    leaves, treedef = jax.tree.flatten(out)
    values.append([np.asarray(x, np.float64) for x in leaves])
    counts.append(_batch_size(batch))
    if progress is not None:
      progress(index + 1, sum(counts))
  if not counts:
    raise ValueError('over_batches got no batches; pass a non-empty iterable of batches.')
  k = len(counts)
  w = np.asarray(counts, np.float64) if weights == 'examples' else np.ones(k)
  w = w / w.sum()
  mean, se, probe, data = [], [], [], []
  for i in range(len(values[0])):
    m = np.stack([v[i] for v in values])  # [K, ...]
    wb = w.reshape((k,) + (1,) * (m.ndim - 1))
    mu = np.sum(wb * m, axis=0)
    var = np.sum(wb ** 2 * (m - mu) ** 2, axis=0) * k / (k - 1) if k > 1 else np.full_like(
        mu, np.nan)
    mean.append(mu)
    se.append(np.sqrt(var))
    if with_stderr:
      probe_var = np.sum(wb ** 2 * np.stack([e[i] for e in errors]) ** 2, axis=0)
      probe.append(np.sqrt(probe_var))
      data.append(np.sqrt(np.maximum(var - probe_var, 0.0)))
  unflatten = lambda xs: jax.tree.unflatten(treedef, xs)
  return DatasetEstimate(
      mean=unflatten(mean), standard_error=unflatten(se),
      probe_standard_error=unflatten(probe) if with_stderr else None,
      data_standard_error=unflatten(data) if with_stderr else None,
      num_examples=int(sum(counts)), num_batches=k)
