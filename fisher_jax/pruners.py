"""`FisherExplosionPruner`: an Optuna pruner that stops the trials whose early Tr(F) explodes.

Needs the `tune` extra (optuna); nothing in the core library imports this module.

The study's claim is that a run whose Fisher trace explodes early generalizes worse. The pruner
turns that into a rule. At every epoch e that a trial reports (e >= `warmup_epochs`), it reads
the early-phase Tr(F_i) (`early_fisher`, by default the study's definition) off the trial's
curves up to epoch e, and off the curves up to epoch e of the study's "good" completed trials:
the best `top_fraction` of the COMPLETE trials by objective value (at least one, the best). It
prunes when

    early Tr(F) of the trial  >  factor * max over the good trials of their early Tr(F) by epoch e

and at least `min_completed_trials` trials are COMPLETE. Consequences, by construction:

* nothing is pruned before `warmup_epochs` epochs or before `min_completed_trials` trials end;
* the best completed trial's own curve is never pruned (its value is one of those in the max and
  `factor >= 1`), nor is any curve at or below the good trials' own;
* only a trial whose early Tr(F) is above every good trial's is pruned, so the pruner never acts
  on low-Tr(F) failures (a diverging large learning rate): that is what `MedianPruner` is for.

A trial's curves are its logged metrics per epoch (the `TRIAL_METRICS` columns of its
metrics.jsonl), stored as the trial's user attribute `metrics` by `record_metrics`, with the
run's resolved config as the user attribute `config` (the window definitions of
`analysis.EarlyPhase` read it).
`experiments.tune` records both after every epoch; a user's own objective calls `record_metrics`
before `trial.report`.
"""

import math
from typing import Any, Callable, Mapping, Optional, Sequence

from fisher_jax import _extras

_extras.require('tune', __name__)

import optuna  # pylint: disable=g-import-not-at-top,wrong-import-position
import pandas as pd  # pylint: disable=g-import-not-at-top,wrong-import-position

from fisher_jax import analysis  # pylint: disable=g-import-not-at-top,wrong-import-position
from fisher_jax.analysis import summaries  # pylint: disable=wrong-import-position

METRICS_ATTR = 'metrics'
CONFIG_ATTR = 'config'
# The per-epoch columns kept in a trial (what the early-phase definitions read).
TRIAL_METRICS = (summaries.FISHER, summaries.TRAIN_ACCURACY, 'val/accuracy')


def study_early_fisher(run: analysis.Run) -> float:
  """The study's primary early-phase Tr(F_i) of a run in progress (`analysis.early_fisher`).

  The maximum of the logged Tr(F) from step 0 up to the first epoch whose training accuracy
  reaches 0.8; before that epoch, the maximum so far (a lower bound of the final value).
  """
  return analysis.early_fisher(run, allow_unfinished=True)


def record_metrics(trial: optuna.trial.Trial, frame: pd.DataFrame,
                   config: Optional[Mapping[str, Any]] = None):
  """Stores a run's per-epoch curves (and its config) in `trial`'s user attributes.

  Args:
    trial: the running trial.
    frame: the run's metrics, one row per logged point ('step', 'epoch' and metric columns, as
      `analysis.read_metrics` returns); only the `TRIAL_METRICS` columns are kept.
    config: the run's resolved config as nested dicts (its config.json); stored once.
  """
  columns = ['step', 'epoch'] + [m for m in TRIAL_METRICS if m in frame]
  rows = frame[columns].dropna(how='all', subset=columns[2:])
  records = [{k: float(v) if k != 'step' else int(v) for k, v in row.items() if v == v}
             for row in rows.to_dict('records')]  # v == v drops NaN.
  trial.set_user_attr(METRICS_ATTR, records)
  if config is not None and CONFIG_ATTR not in trial.user_attrs:
    trial.set_user_attr(CONFIG_ATTR, dict(config))


def trial_run(trial: optuna.trial.FrozenTrial, upto_epoch: Optional[float] = None
              ) -> analysis.Run:
  """The trial's recorded curves as an `analysis.Run`, cut after epoch `upto_epoch`."""
  records = trial.user_attrs.get(METRICS_ATTR, [])
  frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(
      {'step': pd.Series(dtype=int), 'epoch': pd.Series(dtype=float)})
  if upto_epoch is not None and len(frame):
    frame = frame[frame.epoch <= upto_epoch].reset_index(drop=True)
  return analysis.Run(name=f'trial_{trial.number}', path='', metrics=frame,
                      config=trial.user_attrs.get(CONFIG_ATTR, {}))


class FisherExplosionPruner(optuna.pruners.BasePruner):
  """Prunes a trial whose early Tr(F) is far above the good completed trials' (module docstring).

  Args:
    factor: the multiple (>= 1) of the good trials' largest early Tr(F) that prunes.
    warmup_epochs: no trial is pruned at an epoch below this (the step of `trial.report`).
    min_completed_trials: no trial is pruned before this many trials are COMPLETE.
    top_fraction: the share (0, 1] of COMPLETE trials, best objective first, taken as good.
    early_fisher: `analysis.Run -> float`, the early-phase Tr(F_i) of a run's curves (NaN when
      undefined, e.g. a threshold not reached yet: then nothing is pruned on it). Default: the
      study's definition, `study_early_fisher`.
  """

  def __init__(self, *, factor: float = 2.0, warmup_epochs: int = 1,
               min_completed_trials: int = 3, top_fraction: float = 0.5,
               early_fisher: Callable[[analysis.Run], float] = study_early_fisher):
    if not factor >= 1.0:
      raise ValueError(f'FisherExplosionPruner factor={factor} must be at least 1 (a smaller '
                       'factor could prune the best trial itself).')
    if warmup_epochs < 0 or min_completed_trials < 1:
      raise ValueError(f'FisherExplosionPruner warmup_epochs={warmup_epochs} must be >= 0 and '
                       f'min_completed_trials={min_completed_trials} >= 1.')
    if not 0.0 < top_fraction <= 1.0:
      raise ValueError(f'FisherExplosionPruner top_fraction={top_fraction} must be in (0, 1].')
    self.factor = factor
    self.warmup_epochs = warmup_epochs
    self.min_completed_trials = min_completed_trials
    self.top_fraction = top_fraction
    self.early_fisher = early_fisher

  def good_trials(self, study: optuna.Study) -> Sequence[optuna.trial.FrozenTrial]:
    """The best `top_fraction` of the COMPLETE trials (at least one), best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and not math.isnan(t.value)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done.sort(key=lambda t: t.value, reverse=maximize)
    return done[:max(1, math.ceil(self.top_fraction * len(done)))] if done else []

  def threshold(self, study: optuna.Study, epoch: float) -> float:
    """The early Tr(F) above which a trial at `epoch` is pruned (NaN: no rule yet)."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < self.min_completed_trials:
      return math.nan
    values = [self.early_fisher(trial_run(t, epoch)) for t in self.good_trials(study)]
    values = [v for v in values if not math.isnan(v)]
    return self.factor * max(values) if values else math.nan

  def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    epoch = trial.last_step
    if epoch is None or epoch < self.warmup_epochs:
      return False
    value = self.early_fisher(trial_run(trial, epoch))
    if math.isnan(value):
      return False
    threshold = self.threshold(study, epoch)
    return not math.isnan(threshold) and value > threshold

