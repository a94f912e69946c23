"""Per-run summary numbers: the early-phase Tr(F_i), best and final metrics, values at the best.

The early-phase Fisher trace Tr(F_i) summarizes how far Tr(F) rose in the early phase of
training. Two definitions are offered (`EarlyPhase.method`):

* 'window': the maximum of the logged Tr(F) over the epochs [start_epoch, end_epoch]. With
  end_epoch None the window ends where the run's config says (`experiment.early_epochs`, set by
  the experiment configs), else at `end_fraction` of its num_epochs. Step 0 (the initial value)
  counts when start_epoch is 0.
* 'threshold': the logged Tr(F) at the first point where the training accuracy
  (`accuracy_metric`, by default the epoch's running mini-batch accuracy) first reaches
  `threshold`; precisely, the first Tr(F) record at or after that point. NaN if it is never
  reached.
"""

import dataclasses
import math
from typing import Optional

import numpy as np

from fisher_jax.analysis.runs import Run

FISHER = 'curvature/fisher_trace'
METHODS = ('window', 'threshold')


@dataclasses.dataclass(frozen=True)
class EarlyPhase:
  """How the early-phase Tr(F_i) is read off a run (see the module docstring).

  Attributes:
    method: 'window' or 'threshold'.
    start_epoch: first epoch of the window (inclusive).
    end_epoch: last epoch of the window (inclusive); None: the run's `experiment.early_epochs`,
      else `end_fraction * num_epochs`.
    end_fraction: the window's end as a fraction of the run's `num_epochs`, for runs whose
      config has no `experiment.early_epochs` (when end_epoch is None).
    threshold: the training accuracy that ends the early phase ('threshold' method).
    metric: the curvature metric summarized.
    accuracy_metric: the accuracy compared with `threshold`.
  """
  method: str = 'window'
  start_epoch: float = 0.0
  end_epoch: Optional[float] = None
  end_fraction: float = 0.25
  threshold: float = 0.8
  metric: str = FISHER
  accuracy_metric: str = 'train/accuracy'

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'EarlyPhase.method={self.method!r} is unknown; choose one of '
                       f'{list(METHODS)}.')
    if not 0.0 < self.end_fraction <= 1.0:
      raise ValueError(f'EarlyPhase.end_fraction={self.end_fraction} must be in (0, 1].')

  def window_end(self, run: Run) -> float:
    """The last epoch of the window for `run`."""
    if self.end_epoch is not None:
      return float(self.end_epoch)
    if run.get('experiment.early_epochs') is not None:
      return float(run.get('experiment.early_epochs'))
    return self.end_fraction * float(run.get('num_epochs'))

  def short(self) -> str:
    """A few words for table headers."""
    if self.method == 'window':
      end = f'{self.end_epoch:g}' if self.end_epoch is not None else 'E'
      return f'max Tr(F) over epochs {self.start_epoch:g}-{end}'
    return f'Tr(F) at train acc {self.threshold:g}'

  def describe(self) -> str:
    """One sentence for reports."""
    if self.method == 'window':
      end = (f'epoch {self.end_epoch:g}' if self.end_epoch is not None else
             f"the config's experiment.early_epochs (else {self.end_fraction:.0%} of the epochs)")
      return f'the maximum of {self.metric} over epochs {self.start_epoch:g} to {end}'
    return (f'{self.metric} when {self.accuracy_metric} first reaches {self.threshold:g}')


def early_value(run: Run, phase: EarlyPhase = EarlyPhase()) -> float:
  """The early-phase value of `phase.metric` in `run` (Tr(F_i) by default); NaN if undefined."""
  if not run.has(phase.metric):
    return math.nan
  values = run.series(phase.metric)
  if phase.method == 'window':
    inside = values[(values.epoch >= phase.start_epoch) & (values.epoch <= phase.window_end(run))]
    return float(inside.value.max()) if len(inside) else math.nan
  if not run.has(phase.accuracy_metric):
    return math.nan
  accuracy = run.series(phase.accuracy_metric)
  reached = accuracy[accuracy.value >= phase.threshold]
  if not len(reached):
    return math.nan
  after = values[values.step >= reached.step.iloc[0]]
  return float(after.value.iloc[0]) if len(after) else math.nan


def best_value(run: Run, metric: str = 'test/accuracy') -> float:
  """The maximum of `metric` over the run (NaN if never logged)."""
  return float(run.series(metric).value.max()) if run.has(metric) else math.nan


def final_value(run: Run, metric: str = 'test/accuracy') -> float:
  """The last logged value of `metric` (NaN if never logged)."""
  return float(run.series(metric).value.iloc[-1]) if run.has(metric) else math.nan


def value_at_best(run: Run, metric: str, by: str = 'test/accuracy') -> float:
  """`metric` at the first point where `by` is at its maximum (NaN if either is missing).

  E.g. `value_at_best(run, 'curvature/hessian_trace')` is Tr(H) at the best-test point.
  """
  if not (run.has(metric) and run.has(by)):
    return math.nan
  rows = run.metrics[['step', by, metric]].dropna()
  if not len(rows):
    return math.nan
  return float(rows[metric].iloc[int(np.argmax(rows[by].to_numpy()))])


def mean_value(run: Run, metric: str, start_epoch: float = 0.0,
               end_epoch: Optional[float] = None) -> float:
  """The mean of `metric` over the points with epoch in [start_epoch, end_epoch] (NaN if none).

  Used as a learning-speed measure: the mean training accuracy over the epochs is the
  normalized area under the accuracy curve.
  """
  if not run.has(metric):
    return math.nan
  values = run.series(metric)
  end = math.inf if end_epoch is None else end_epoch
  inside = values[(values.epoch >= start_epoch) & (values.epoch <= end)]
  return float(inside.value.mean()) if len(inside) else math.nan
