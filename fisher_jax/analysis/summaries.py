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

The confirmatory study (v2) reads runs trained to a fit target (`config.stop`): its primary
Tr(F_i) is `early_fisher_window` (the mean over epochs (1, 7], never step 0; `reduce='max'` and
`steps=(start, end)` and `relative_to_init=True` are sensitivity definitions, as is
`value_at_fit(run, 0.8, metric=FISHER)`); a run's convergence epoch is `convergence_epoch`, its
converged test accuracy and Tr(H) `converged_value`, and runs compared below convergence are
read at the same fit with `value_at_fit`.
"""

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import pandas as pd

from fisher_jax.analysis.runs import Run
from fisher_jax.training import fit_stop

FISHER = 'curvature/fisher_trace'
TRAIN_ACCURACY = 'train/accuracy'
TRAIN_FULL_ACCURACY = fit_stop.TRAIN_FULL_ACCURACY  # the whole training subset, at epoch ends
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


# The confirmatory study's early phase (docs/experiments.md, "Protocol v2"): the paper records
# Tr(F_i) "during the early phase of training (2-7 epochs)".
WINDOW_START_EPOCH = 1.0
WINDOW_END_EPOCH = 7.0


def early_fisher_window(records: Union[Run, pd.DataFrame, Iterable[Mapping[str, Any]]], *,
                        start_epoch: float = WINDOW_START_EPOCH,
                        end_epoch: float = WINDOW_END_EPOCH, metric: str = FISHER,
                        reduce: str = 'mean', allow_unfinished: bool = False,
                        steps: Optional[Tuple[int, int]] = None,
                        relative_to_init: bool = False) -> float:
  """The confirmatory study's primary early-phase Tr(F_i): the mean of Tr(F) over a window.

  Tr(F_i) = mean of `metric` over the records with start_epoch < epoch <= end_epoch, every
  in-epoch and epoch-end measurement inside the window counting once. The window is open on the
  left, so the initialization (step 0, epoch 0) is never read, whatever `start_epoch` (>= 0):
  runs of one seed share their initial weights and so their initial Tr(F), whatever their
  learning rate.

  Args:
    records: a `Run`, its metrics DataFrame, or metrics.jsonl records (dicts with 'step',
      'epoch' and metric names), e.g. the records of a run still in progress.
    start_epoch: the window starts after this epoch (exclusive; >= 0).
    end_epoch: the window's last epoch (inclusive; > start_epoch).
    metric: the curvature metric summarized.
    reduce: 'mean' (the primary definition) or 'max' (a sensitivity definition).
    allow_unfinished: for a run that has not logged `end_epoch` yet, the value over the part
      of the window logged so far (what a pruner reads) instead of NaN.
    steps: (start, end): the window in optimizer steps instead of epochs, start < step <= end
      (a sensitivity definition that does not scale with the batch size; start >= 0, so step 0
      is never read either); replaces `start_epoch` and `end_epoch`.
    relative_to_init: divide by the value at step 0 (`initial_value`): whether and how far
      Tr(F) rose above its initialization (a sensitivity definition; NaN without a positive
      step-0 value).

  Returns:
    Tr(F_i); NaN when no record of `metric` lies in the window, or the run has not reached
    the window's end and `allow_unfinished` is False.
  """
  column, start, end = ('epoch', start_epoch, end_epoch) if steps is None else (
      'step', *steps)
  if not 0.0 <= start < end:
    raise ValueError(f'the early-phase window ({start}, {end}] (in {column}s) must have '
                     f'0 <= start < end.')
  if reduce not in ('mean', 'max'):
    raise ValueError(f"reduce={reduce!r} is unknown; choose 'mean' or 'max'.")
  frame = _frame(records)
  if metric not in frame or column not in frame:
    return math.nan
  if not allow_unfinished and not (frame[column] >= end - 1e-9).any():
    return math.nan
  values = frame[[column, metric]].dropna()
  inside = values[(values[column] > start + 1e-9) & (values[column] <= end + 1e-9)]
  if not len(inside):
    return math.nan
  value = float(inside[metric].mean() if reduce == 'mean' else inside[metric].max())
  if relative_to_init:
    initial = initial_value(frame, metric=metric)
    return value / initial if initial > 0 else math.nan
  return value


def initial_value(records: Union[Run, pd.DataFrame, Iterable[Mapping[str, Any]]], *,
                  metric: str = FISHER) -> float:
  """`metric` at step 0 (the initialization, before any update); NaN if not logged there.

  Not an early-phase Tr(F_i): runs of one seed share it whatever their learning rate. It is the
  reference of `early_fisher_window(..., relative_to_init=True)` (did Tr(F) rise above its
  initial value?).
  """
  frame = _frame(records)
  if metric not in frame:
    return math.nan
  at_init = frame[frame.step == 0][metric].dropna()
  return float(at_init.iloc[0]) if len(at_init) else math.nan


def value_at_fit(records: Union[Run, pd.DataFrame, Iterable[Mapping[str, Any]]], level: float,
                 *, metric: str = 'test/accuracy',
                 fit_metric: str = TRAIN_FULL_ACCURACY) -> float:
  """`metric` when the fit of the training set first reaches `level`.

  Let s* be the step of the first record after step 0 whose `fit_metric` (by default the
  accuracy on the whole training subset, logged at epoch ends) is >= `level`. The value is
  `metric` at its first record with step >= s* (at s* itself when both are logged at that epoch's
  end). Step 0 is never read: e.g. `value_at_fit(run, 0.8, metric=FISHER)` is a sensitivity
  definition of the early-phase Tr(F_i), and `value_at_fit(run, L)` the test accuracy of a
  comparison of runs at the same fit L.

  Args:
    records: a `Run`, its metrics DataFrame, or metrics.jsonl records.
    level: the fit reached (a training accuracy).
    metric: the value read.
    fit_metric: the training accuracy compared with `level`.

  Returns:
    The value; NaN when `level` is never reached or `metric` has no record from s* on.
  """
  frame = _frame(records)
  if metric not in frame or fit_metric not in frame:
    return math.nan
  fit = frame[['step', fit_metric]].dropna()
  reached = fit[(fit.step > 0) & (fit[fit_metric] >= level)]
  if not len(reached):
    return math.nan
  after = frame[['step', metric]].dropna()
  after = after[after.step >= reached.step.iloc[0]]
  return float(after[metric].iloc[0]) if len(after) else math.nan


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


def _epoch_ends(values: pd.DataFrame) -> pd.DataFrame:
  """The rows of a `Run.series` logged at the end of an epoch: an integral epoch >= 1 (not
  step 0, not an in-epoch measurement)."""
  return values[(values.epoch >= 1 - 1e-9) & ((values.epoch - values.epoch.round()).abs() < 1e-6)]


def mean_value(run: Run, metric: str, start_epoch: float = 0.0,
               end_epoch: Optional[float] = None, epoch_ends: bool = False) -> float:
  """The mean of `metric` over the points with epoch in [start_epoch, end_epoch] (NaN if none).

  Used as a learning-speed measure: the mean training accuracy over the epochs is the
  normalized area under the accuracy curve. With `epoch_ends`, only the points logged at the end
  of an epoch count (no step-0 or in-epoch measurement), so the mean weighs every epoch once
  whatever the measurement cadence.
  """
  if not run.has(metric):
    return math.nan
  values = run.series(metric)
  if epoch_ends:
    values = _epoch_ends(values)
  end = math.inf if end_epoch is None else end_epoch
  inside = values[(values.epoch >= start_epoch) & (values.epoch <= end)]
  return float(inside.value.mean()) if len(inside) else math.nan


def convergence_epoch(run: Run) -> Optional[int]:
  """The run's convergence epoch E: the first epoch whose `train_full/accuracy` reaches its
  config's fit target `stop.train_accuracy` (`fisher_jax.training.fit_stop.convergence_epoch`); None
  when the run has no fit target or never reached it (unconverged)."""
  target = float(run.get('stop.train_accuracy') or 0.0)
  if not target > 0 or TRAIN_FULL_ACCURACY not in run.metrics:
    return None
  rows = run.metrics[['step', 'epoch', TRAIN_FULL_ACCURACY]].dropna()
  return fit_stop.convergence_epoch(rows.to_dict('records'), target)


def converged_values(run: Run, metric: str = 'test/accuracy') -> np.ndarray:
  """[k] values of `metric` at the ends of epochs E, E + 1, ..., E + stop.extra_epochs (the
  epochs a converged run evaluates every epoch), E = `convergence_epoch(run)`; empty when the
  run is unconverged or did not log `metric` there."""
  converged_at = convergence_epoch(run)
  if converged_at is None or not run.has(metric):
    return np.zeros(0)
  last = converged_at + int(run.get('stop.extra_epochs') or 0)
  values = _epoch_ends(run.series(metric))
  inside = values[(values.epoch >= converged_at - 1e-6) & (values.epoch <= last + 1e-6)]
  return inside.value.to_numpy(float)


def converged_value(run: Run, metric: str = 'test/accuracy') -> float:
  """The mean of `metric` over epochs E..E + stop.extra_epochs (`converged_values`), e.g. the
  converged test accuracy or Tr(H) at convergence; NaN for an unconverged run."""
  values = converged_values(run, metric)
  return float(values.mean()) if len(values) else math.nan
