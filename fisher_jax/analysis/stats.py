"""Effect sizes with confidence intervals, correlations, and seed statistics (scipy, pandas).

The study's statistical rules (docs/experiments.md, "Claims and statistical rules"):

* `ratio(a, b)`: the ratio of geometric means of two independent arms (curvature: Tr(F_i),
  Tr(H)), with Welch's t interval on the log values, exponentiated;
* `difference(a, b)`: the difference of means (accuracies), Welch's t interval;
* `paired_difference(a, b)`: the mean of a_i - b_i over pairs (runs of the same seed), the
  paired t interval;
* `correlation(x, y)`: Pearson's or Spearman's coefficient with a bootstrap interval.

An `Effect` is "held" in a direction only when its interval excludes the no-effect value
(`Effect.verdict`). Arms with fewer than 2 finite values give no interval (NaN).

`correlation(x, y, method='spearman')` gives the coefficient, its p-value (scipy's test) and a
percentile bootstrap interval: the n points are resampled in (x, y) pairs with replacement
(`scipy.stats.bootstrap(paired=True)`); resamples where the coefficient is undefined (all x or
all y equal) are left out of the interval. With `clusters` (e.g. the seed of every run, when the
runs of one seed share their initialization and data order) whole clusters are resampled instead.

The confirmatory study (v2) adds:

* `paired_ratio(a, b)`: the geometric mean of a_i / b_i over seed pairs, with the paired t
  interval on log a_i - log b_i, exponentiated;
* one-sided tests at level alpha read off two-sided intervals of confidence
  `one_sided_confidence(alpha, tests)` = 1 - 2 alpha / tests (Bonferroni over a claim's tests);
* `Effect.verdict(direction, minimum=...)`: 'held' also needs the point estimate to reach a
  minimum effect.
"""

import dataclasses
import math
import warnings
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ('pearson', 'spearman')
VERDICTS = ('held', 'not held', 'opposite', 'no data')


@dataclasses.dataclass(frozen=True)
class Effect:
  """An effect size with its confidence interval.

  Attributes:
    kind: 'ratio' (of geometric means), 'difference' (of means), 'paired difference' or
      'spearman' / 'pearson' (a correlation).
    estimate: the effect.
    low, high: the interval (NaN when it cannot be formed).
    null: the no-effect value (1 for a ratio, 0 otherwise).
    n: the number of independent values in each arm (one entry for paired or correlation).
    confidence: the interval's level.
  """
  kind: str
  estimate: float
  low: float
  high: float
  null: float
  n: tuple
  confidence: float = 0.95

  def verdict(self, direction: str, minimum: Optional[float] = None) -> str:
    """'held' if the interval lies on the `direction` side ('greater' or 'less') of the null,
    'opposite' if it lies on the other side, 'not held' if it includes the null, 'no data'
    without an interval.

    With `minimum`, 'held' also needs the point estimate to reach it (estimate >= minimum for
    'greater', <= minimum for 'less'); an interval that excludes the null around a smaller
    effect is 'not held'.
    """
    if direction not in ('greater', 'less'):
      raise ValueError(f'direction={direction!r}; choose greater or less.')
    if not (np.isfinite(self.low) and np.isfinite(self.high)):
      return 'no data'
    above, below = self.low > self.null, self.high < self.null
    if (above and direction == 'greater') or (below and direction == 'less'):
      if minimum is not None and not (self.estimate >= minimum if direction == 'greater'
                                      else self.estimate <= minimum):
        return 'not held'
      return 'held'
    if above or below:
      return 'opposite'
    return 'not held'

  def describe(self, digits: int = 3) -> str:
    """E.g. 'ratio 2.41 [95% CI 1.62, 3.58], n = 3 + 3'."""
    n = ' + '.join(str(k) for k in self.n)
    if not np.isfinite(self.estimate):
      return f'{self.kind} undefined, n = {n}'
    interval = (f'[{self.confidence:.0%} CI {self.low:.{digits}g}, {self.high:.{digits}g}]'
                if np.isfinite(self.low) else '(no interval)')
    return f'{self.kind} {self.estimate:.{digits}g} {interval}, n = {n}'


def _finite(values) -> np.ndarray:
  values = np.asarray(list(values), dtype=float)
  return values[np.isfinite(values)]


def difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> Effect:
  """mean(a) - mean(b) with Welch's t interval (scipy.stats.ttest_ind, equal_var=False)."""
  a, b = _finite(a), _finite(b)
  nan = math.nan
  estimate = float(a.mean() - b.mean()) if len(a) and len(b) else nan
  low = high = nan
  if len(a) >= 2 and len(b) >= 2:
    if np.ptp(a) == 0 and np.ptp(b) == 0:
      low = high = estimate
    else:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
      low, high = float(interval.low), float(interval.high)
  return Effect('difference', estimate, low, high, 0.0, (len(a), len(b)), confidence)


def ratio(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> Effect:
  """Ratio of geometric means, exp(mean log a - mean log b), with Welch's t interval on the
  logs, exponentiated. Non-positive values are dropped (they have no logarithm)."""
  a, b = _finite(a), _finite(b)
  a, b = a[a > 0], b[b > 0]
  diff = difference(np.log(a), np.log(b), confidence=confidence)
  return Effect('ratio', float(np.exp(diff.estimate)), float(np.exp(diff.low)),
                float(np.exp(diff.high)), 1.0, diff.n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], *,
                      confidence: float = 0.95) -> Effect:
  """mean(a_i - b_i) over the pairs where both are finite, with the paired t interval."""
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  if a.shape != b.shape:
    raise ValueError(f'paired arms must have equal length; got {len(a)} and {len(b)}.')
  d = (a - b)[np.isfinite(a) & np.isfinite(b)]
  nan = math.nan
  estimate = float(d.mean()) if len(d) else nan
  low = high = nan
  if len(d) >= 2:
    if np.ptp(d) == 0:
      low = high = estimate
    else:
      with warnings.catch_warnings():  # nearly equal differences: scipy warns, the CI is right
        warnings.simplefilter('ignore')
        interval = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
      low, high = float(interval.low), float(interval.high)
  return Effect('paired difference', estimate, low, high, 0.0, (len(d),), confidence)


def paired_ratio(a: Sequence[float], b: Sequence[float], *,
                 confidence: float = 0.95) -> Effect:
  """The geometric mean of the ratios a_i / b_i over pairs (runs of the same seed).

  estimate = exp(mean_i (log a_i - log b_i)), with the paired t interval on the log differences,
  exponentiated. Pairs where either value is not finite or not positive (no logarithm) are
  dropped. With every pair complete the estimate equals the unpaired ratio of geometric means
  (`ratio`); the interval is the paired one, narrower when the seeds move both arms together.

  Args:
    a: [n] values of one arm, in seed order.
    b: [n] values of the other arm, the same seeds in the same order.
    confidence: the two-sided interval's level.
  """
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  if a.shape != b.shape:
    raise ValueError(f'paired arms must have equal length; got {len(a)} and {len(b)}.')
  keep = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
  diff = paired_difference(np.log(a[keep]), np.log(b[keep]), confidence=confidence)
  return Effect('paired ratio', float(np.exp(diff.estimate)), float(np.exp(diff.low)),
                float(np.exp(diff.high)), 1.0, diff.n, confidence)


def one_sided_confidence(alpha: float, tests: int = 1) -> float:
  """The two-sided confidence level whose interval decides a one-sided test at level `alpha`,
  Bonferroni-corrected over `tests` tests: 1 - 2 alpha / tests (alpha 0.01: 98%; two tests:
  99% each). The interval excludes the null on the claimed side exactly when the one-sided
  test at alpha / tests rejects."""
  if not 0 < alpha < 0.5 or tests < 1:
    raise ValueError(f'alpha={alpha} and tests={tests} must have 0 < alpha < 0.5 and tests >= 1.')
  return 1.0 - 2.0 * alpha / tests


def correlation_effect(c: 'Correlation') -> Effect:
  """A `Correlation` as an `Effect` (null 0)."""
  return Effect(c.method, c.r, c.low, c.high, 0.0, (c.n,), c.confidence)


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


def _weighted_ranks(v: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[R, n] ranks of v [n] in the samples where point j appears weights[r, j] times: the
  number of copies strictly below plus (the copies equal, itself included, + 1) / 2 (the average
  rank of ties, as `scipy.stats.rankdata`)."""
  below = (v[None, :] < v[:, None]).astype(float)  # below[i, j] = v_j < v_i
  equal = (v[None, :] == v[:, None]).astype(float)
  return weights @ below.T + (weights @ equal.T + 1) / 2


def _weighted_coefficient(x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                          method: str) -> np.ndarray:
  """[R] coefficients of the samples where point j appears weights[r, j] times (NaN where a
  variable is constant): Pearson's r of the repeated points, or Spearman's of their ranks."""
  present = weights > 0
  constant = lambda v: (np.where(present, v, -np.inf).max(axis=1)  # noqa: E731
                        == np.where(present, v, np.inf).min(axis=1))
  undefined = constant(x) | constant(y)
  if method == 'spearman':
    x, y = _weighted_ranks(x, weights), _weighted_ranks(y, weights)
  else:
    x, y = np.broadcast_to(x, weights.shape), np.broadcast_to(y, weights.shape)
  total = weights.sum(axis=1, keepdims=True)
  dx = x - (weights * x).sum(axis=1, keepdims=True) / total
  dy = y - (weights * y).sum(axis=1, keepdims=True) / total
  with np.errstate(invalid='ignore', divide='ignore'):
    r = (weights * dx * dy).sum(axis=1) / np.sqrt(
        (weights * dx * dx).sum(axis=1) * (weights * dy * dy).sum(axis=1))
  return np.where(undefined, np.nan, r)


def _cluster_bootstrap(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, method: str,
                       n_resamples: int, rng: np.random.Generator) -> np.ndarray:
  """[n_resamples] coefficients of resamples that draw as many clusters as there are, with
  replacement, each draw bringing all of its cluster's points: a point's weight is the number of
  draws of its cluster."""
  _, cluster_of = np.unique(clusters, return_inverse=True)
  count = cluster_of.max() + 1
  draws = rng.integers(0, count, size=(n_resamples, count))
  times = (draws[:, :, None] == np.arange(count)).sum(axis=1)  # [R, clusters]
  return _weighted_coefficient(x, y, times[:, cluster_of].astype(float), method)


def correlation(x: Sequence[float], y: Sequence[float], method: str = 'spearman', *,
                confidence: float = 0.95, n_resamples: int = 2000,
                seed: int = 0, clusters: Optional[Sequence] = None) -> Correlation:
  """The correlation of paired samples with a percentile bootstrap interval.

  Args:
    x: [n] values; pairs where x or y is not finite are dropped.
    y: [n] values.
    method: 'pearson' (linear) or 'spearman' (rank).
    confidence: the interval's confidence level.
    n_resamples: bootstrap resamples.
    seed: seeds the resampling (the interval is reproducible).
    clusters: [n] labels of the independent units (e.g. every run's seed): the bootstrap
      resamples whole clusters, all points of a cluster together, instead of single (x, y)
      pairs. None: the points are independent.

  Returns:
    A `Correlation`; r, p_value and the interval are NaN when fewer than 3 pairs remain or a
    variable is constant; the interval is NaN with fewer than 2 clusters.
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r} is unknown; choose one of {list(METHODS)}.')
  x = np.asarray(x, dtype=float)
  y = np.asarray(y, dtype=float)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f'x and y must be 1-D of equal length; got shapes {x.shape} and {y.shape}.')
  if clusters is not None and len(clusters) != len(x):
    raise ValueError(f'clusters must label every (x, y) pair; got {len(clusters)} labels for '
                     f'{len(x)} pairs.')
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  n = len(x)
  nan = math.nan
  if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return Correlation(method, nan, nan, nan, nan, n, confidence)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    test = stats.pearsonr(x, y) if method == 'pearson' else stats.spearmanr(x, y)
    if clusters is None:
      distribution = stats.bootstrap(
          (x, y), _statistic(method), paired=True, vectorized=True, n_resamples=n_resamples,
          method='percentile', confidence_level=confidence,
          rng=np.random.default_rng(seed)).bootstrap_distribution
    else:
      labels = np.asarray(clusters)[keep]
      if len(np.unique(labels)) < 2:
        return Correlation(method, float(test.statistic), float(test.pvalue), nan, nan, n,
                           confidence)
      distribution = _cluster_bootstrap(x, y, labels, method, n_resamples,
                                        np.random.default_rng(seed))
  distribution = distribution[np.isfinite(distribution)]
  if not len(distribution):  # every resample undefined: no interval
    return Correlation(method, float(test.statistic), float(test.pvalue), nan, nan, n,
                       confidence)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(distribution, [tail, 100 - tail])
  return Correlation(method, float(test.statistic), float(test.pvalue), float(low), float(high),
                     n, confidence)


def mean_std(frame: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
  """Mean, standard deviation (ddof=1; NaN, not 0, for one seed) and count of `columns` per
  group.

  Returns:
    One row per group: the `by` columns, then `<col>_mean`, `<col>_std` for each column, and
    'n' (rows in the group).
  """
  grouped = frame.groupby(list(by), sort=True, dropna=False)
  out = grouped[list(columns)].agg(['mean', 'std'])
  out.columns = [f'{col}_{stat}' for col, stat in out.columns]
  out['n'] = grouped.size()
  return out.reset_index()


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
  """'0.8712 ± 0.0031 (n = 3)', or '0.8712 (n = 1)' for one value (no standard deviation),
  or '' for none; non-finite values are left out."""
  v = _finite(values)
  if not len(v):
    return ''
  if len(v) == 1:
    return f'{v[0]:.{digits}g} (n = 1)'
  return f'{v.mean():.{digits}g} ± {v.std(ddof=1):.2g} (n = {len(v)})'
