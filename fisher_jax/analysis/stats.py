"""Correlations with bootstrap confidence intervals, and seed statistics (scipy, pandas).

`correlation(x, y, method='spearman')` gives the coefficient, its p-value (scipy's test) and a
percentile bootstrap interval: the n points are resampled in (x, y) pairs with replacement
(`scipy.stats.bootstrap(paired=True)`); resamples where the coefficient is undefined (all x or
all y equal) are left out of the interval.
"""

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ('pearson', 'spearman')


@dataclasses.dataclass(frozen=True)
class Correlation:
  """A correlation coefficient with its uncertainty.

  Attributes:
    method: 'pearson' or 'spearman'.
    r: the coefficient on all n points (NaN if n < 3 or a variable is constant).
    p_value: scipy's two-sided p-value for r != 0.
    low: lower end of the bootstrap interval.
    high: upper end of the bootstrap interval.
    n: the number of (x, y) pairs with both values finite.
    confidence: the interval's confidence level.
  """
  method: str
  r: float
  p_value: float
  low: float
  high: float
  n: int
  confidence: float

  def sign(self) -> str:
    """'negative' / 'positive' when the interval excludes 0, else 'undetermined'."""
    if self.high < 0:
      return 'negative'
    if self.low > 0:
      return 'positive'
    return 'undetermined'

  def describe(self) -> str:
    symbol = {'pearson': 'r', 'spearman': 'rho'}[self.method]
    return (f'{self.method} {symbol} = {self.r:.2f} '
            f'[{self.confidence:.0%} CI {self.low:.2f}, {self.high:.2f}], '
            f'p = {self.p_value:.2g}, n = {self.n}')


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
  """Pearson's r of x and y along `axis` (NaN where either is constant)."""
  x = x - x.mean(axis=axis, keepdims=True)
  y = y - y.mean(axis=axis, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    return (x * y).sum(axis=axis) / np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))


def _statistic(method: str):
  """The vectorized coefficient `(x, y, axis) -> r` that the bootstrap resamples."""
  if method == 'pearson':
    return _pearson_along
  return lambda x, y, axis=-1: _pearson_along(stats.rankdata(x, axis=axis),
                                              stats.rankdata(y, axis=axis), axis)


def correlation(x: Sequence[float], y: Sequence[float], method: str = 'spearman', *,
                confidence: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> Correlation:
  """The correlation of paired samples with a percentile bootstrap interval.

  Args:
    x: [n] values; pairs where x or y is not finite are dropped.
    y: [n] values.
    method: 'pearson' (linear) or 'spearman' (rank).
    confidence: the interval's confidence level.
    n_resamples: bootstrap resamples.
    seed: seeds the resampling (the interval is reproducible).

  Returns:
    A `Correlation`; r, p_value and the interval are NaN when fewer than 3 pairs remain or a
    variable is constant.
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r} is unknown; choose one of {list(METHODS)}.')
  x = np.asarray(x, dtype=float)
  y = np.asarray(y, dtype=float)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f'x and y must be 1-D of equal length; got shapes {x.shape} and {y.shape}.')
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  n = len(x)
  nan = math.nan
  if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return Correlation(method, nan, nan, nan, nan, n, confidence)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    test = stats.pearsonr(x, y) if method == 'pearson' else stats.spearmanr(x, y)
    boot = stats.bootstrap((x, y), _statistic(method), paired=True, vectorized=True,
                           n_resamples=n_resamples, method='percentile',
                           confidence_level=confidence, rng=np.random.default_rng(seed))
  distribution = boot.bootstrap_distribution
  distribution = distribution[np.isfinite(distribution)]
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(distribution, [tail, 100 - tail])
  return Correlation(method, float(test.statistic), float(test.pvalue), float(low), float(high),
                     n, confidence)


def mean_std(frame: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
  """Mean, standard deviation (ddof=1; 0 for one seed) and count of `columns` per group.

  Returns:
    One row per group: the `by` columns, then `<col>_mean`, `<col>_std` for each column, and
    'n' (rows in the group).
  """
  grouped = frame.groupby(list(by), sort=True, dropna=False)
  out = grouped[list(columns)].agg(['mean', 'std'])
  out.columns = [f'{col}_{stat}' for col, stat in out.columns]
  for col in columns:
    out[f'{col}_std'] = out[f'{col}_std'].fillna(0.0)
  out['n'] = grouped.size()
  return out.reset_index()
