"""Per-run summary numbers: the early-phase Tr(F_i), best and final metrics, values at the best.

The early-phase Fisher trace Tr(F_i) summarizes how far Tr(F) rose in the early phase of
training. The study's PRIMARY definition (fixed in docs/experiments.md before the CPU study ran)
is `early_fisher`: the maximum of the logged Tr(F) from step 0 up to and including the first
epoch whose training accuracy reaches PRIMARY_THRESHOLD (0.8); it follows training progress
rather than a fixed epoch window, so slow and fast runs are compared at the same stage.
`EarlyPhase` names it and the sensitivity-analysis alternatives (`EarlyPhase.method`):

* 'max_until_threshold' (primary): `early_fisher` with `threshold`.
* 'window': the maximum of the logged Tr(F) over the epochs [start_epoch, end_epoch]. With
  end_epoch None the window ends where the run's config says (`experiment.early_epochs`, set by
  the experiment configs), else at `end_fraction` of its num_epochs. Step 0 (the initial value)
  counts when start_epoch is 0.
* 'threshold': the logged Tr(F) at the first point where the training accuracy
  (`accuracy_metric`, by default the epoch's running mini-batch accuracy) first reaches
  `threshold`; precisely, the first Tr(F) record at or after that point. NaN if it is never
  reached.

Test accuracy is reported at the epoch of best VALIDATION accuracy (`test_at_best_val`), so no
number is selected on the test split.
"""

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd

from fisher_jax.analysis.runs import Run

FISHER = 'curvature/fisher_trace'
TRAIN_ACCURACY = 'train/accuracy'
PRIMARY_THRESHOLD = 0.8
METHODS = ('max_until_threshold', 'window', 'threshold')


def _frame(records: Union[Run, pd.DataFrame, Iterable[Mapping[str, Any]]]) -> pd.DataFrame:
  """Metric records as a DataFrame sorted by step (a Run's metrics, a frame, or dicts)."""
  if isinstance(records, Run):
    return records.metrics
  frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame.from_records(
      list(records))
  if 'step' not in frame:
    return pd.DataFrame({'step': pd.Series(dtype=int)})
  return frame.sort_values('step', kind='stable').reset_index(drop=True)


def early_fisher(records: Union[Run, pd.DataFrame, Iterable[Mapping[str, Any]]], *,
                 threshold: float = PRIMARY_THRESHOLD, metric: str = FISHER,
                 accuracy_metric: str = TRAIN_ACCURACY, allow_unfinished: bool = False) -> float:
  """The study's primary early-phase Tr(F_i): max Tr(F) until training accuracy >= threshold.

  Let s* be the step of the first record whose `accuracy_metric` (by default the mean
  mini-batch training accuracy of an epoch, logged at its end) is >= `threshold`. Tr(F_i) is
  the maximum of `metric` over the records with step <= s* (step 0, every in-epoch and
  epoch-end measurement up to and including s*).

  Args:
    records: a `Run`, its metrics DataFrame, or metrics.jsonl records (dicts with 'step' and
      metric names), e.g. the records of a run still in progress.
    threshold: the training accuracy that ends the early phase.
    metric: the curvature metric summarized.
    accuracy_metric: the accuracy compared with `threshold`.
    allow_unfinished: when the threshold is not reached yet, return the maximum so far instead
      of NaN (a lower bound of the final value, for pruning runs in progress).

  Returns:
    Tr(F_i); NaN when `metric` was never logged, or the threshold was never reached and
    `allow_unfinished` is False.
  """
  frame = _frame(records)
  if metric not in frame or not frame[metric].notna().any():
    return math.nan
  values = frame[['step', metric]].dropna()
  if accuracy_metric in frame:
    accuracy = frame[['step', accuracy_metric]].dropna()
    reached = accuracy[accuracy[accuracy_metric] >= threshold]
  else:
    reached = frame.iloc[:0]
  if len(reached):
    values = values[values.step <= reached.step.iloc[0]]
  elif not allow_unfinished:
    return math.nan
  return float(values[metric].max())


@dataclasses.dataclass(frozen=True)
class EarlyPhase:
  """How the early-phase Tr(F_i) is read off a run (see the module docstring).

  Attributes:
    method: 'max_until_threshold' (the primary definition), 'window' or 'threshold'.
    start_epoch: first epoch of the window (inclusive).
    end_epoch: last epoch of the window (inclusive); None: the run's `experiment.early_epochs`,
      else `end_fraction * num_epochs`.
    end_fraction: the window's end as a fraction of the run's `num_epochs`, for runs whose
      config has no `experiment.early_epochs` (when end_epoch is None).
    threshold: the training accuracy that ends the early phase ('max_until_threshold' and
      'threshold').
    metric: the curvature metric summarized.
    accuracy_metric: the accuracy compared with `threshold`.
  """
  method: str = 'max_until_threshold'
  start_epoch: float = 0.0
  end_epoch: Optional[float] = None
  end_fraction: float = 0.25
  threshold: float = PRIMARY_THRESHOLD
  metric: str = FISHER
  accuracy_metric: str = TRAIN_ACCURACY

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
    if self.method == 'max_until_threshold':
      return f'max Tr(F) until train acc {self.threshold:g}'
    if self.method == 'window':
      end = f'{self.end_epoch:g}' if self.end_epoch is not None else 'E'
      return f'max Tr(F) over epochs {self.start_epoch:g}-{end}'
    return f'Tr(F) at train acc {self.threshold:g}'

  def describe(self) -> str:
    """One sentence for reports."""
    if self.method == 'max_until_threshold':
      return (f'the maximum of {self.metric} from step 0 up to and including the first epoch '
              f'whose {self.accuracy_metric} reaches {self.threshold:g}')
    if self.method == 'window':
      end = (f'epoch {self.end_epoch:g}' if self.end_epoch is not None else
             f"the config's experiment.early_epochs (else {self.end_fraction:.0%} of the epochs)")
      return f'the maximum of {self.metric} over epochs {self.start_epoch:g} to {end}'
    return (f'{self.metric} when {self.accuracy_metric} first reaches {self.threshold:g}')


def early_value(run: Run, phase: EarlyPhase = EarlyPhase()) -> float:
  """The early-phase value of `phase.metric` in `run` (Tr(F_i) by default); NaN if undefined."""
  if phase.method == 'max_until_threshold':
    return early_fisher(run, threshold=phase.threshold, metric=phase.metric,
                        accuracy_metric=phase.accuracy_metric)
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


def value_at_best(run: Run, metric: str, by: str = 'val/accuracy') -> float:
  """`metric` at the first point where `by` is at its maximum (NaN if either is missing).

  E.g. `value_at_best(run, 'curvature/hessian_trace')` is Tr(H) at the best-validation point.
  """
  if not (run.has(metric) and run.has(by)):
    return math.nan
  rows = run.metrics[['step', by, metric]].dropna()
  if not len(rows):
    return math.nan
  return float(rows[metric].iloc[int(np.argmax(rows[by].to_numpy()))])


def test_at_best_val(run: Run) -> float:
  """The test accuracy at the first evaluation of best validation accuracy: the study's reported
  test accuracy (the model is selected on validation, never on test)."""
  return value_at_best(run, 'test/accuracy', by='val/accuracy')


def diverged(run: Run) -> bool:
  """Whether the run diverged: its record says so (`Run.diverged`, when the runs module
  provides it), or a training or validation loss logged with its accuracy is not finite
  (NaN or infinite; a NaN loss is stored as NaN, like a missing value, so the loss is read at
  the points that logged the accuracy)."""
  flag = getattr(run, 'diverged', None)
  if flag is not None and not callable(flag) and bool(flag):
    return True  # the divergence guard's record; otherwise the losses decide
  for split in ('train', 'val'):
    loss, accuracy = f'{split}/loss', f'{split}/accuracy'
    if loss in run.metrics and accuracy in run.metrics:
      logged = run.metrics[run.metrics[accuracy].notna()]
      values = pd.to_numeric(logged[loss], errors='coerce').to_numpy(float)
      if len(values) and not np.isfinite(values).all():
        return True
  return False


def finished(run: Run) -> bool:
  """Whether the run logged its last epoch (`num_epochs`); a run still going, or stopped before
  its end, is not finished and is left out of every claim (a diverged run counts as finished
  when it ran to its end)."""
  epochs = run.get('num_epochs')
  if epochs is None or 'epoch' not in run.metrics or not len(run.metrics):
    return True  # nothing to compare with
  return bool(run.metrics['epoch'].max() >= float(epochs) - 1e-6)


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
