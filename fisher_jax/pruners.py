"""Optuna pruners of a hyperparameter search: the Fisher-explosion rule and its combinations.

Needs the `tune` extra (optuna); nothing in the core library imports this module.

`FisherExplosionPruner`
-----------------------
The study's claim is that a run whose Fisher trace stays or rises high in its early phase
generalizes worse. The pruner turns that into a rule. Let F_t(e) be the early-phase Tr(F_i) of
trial t read off its curves up to epoch e. By default (`early_fisher='window'`) it is the
confirmatory study's definition on the curve so far,

    F_t(e) = mean of Tr(F) over the records of t with 1 < epoch <= min(e, 7)

(`analysis.early_fisher_window(run, allow_unfinished=True)`; NaN while t has no Tr(F) record
after epoch 1). At every epoch e >= `warmup_epochs` that a trial t reports, with at least
`min_completed_trials` COMPLETE trials in the study, the pruner prunes t when

    F_t(e)  >  factor * max over the good trials g of F_g(e),

the good trials being the best `top_fraction` of the COMPLETE trials by objective value (at
least one: the best). Both sides are read over the same epochs (1, min(e, 7)], so a trial is
compared with what the good trials looked like when they were as far as it is.

Guarantees, by construction (tests/test_pruners.py checks each):

* it never prunes a trial at an epoch where F_t(e) is NaN: not at epoch 1 or before (the
  window opens after epoch 1), not before `warmup_epochs`, not before `min_completed_trials`
  trials are COMPLETE, not a trial that logs no Tr(F);
* it never prunes the best completed trial: a trial whose curves equal the best COMPLETE
  trial's up to epoch e has F_t(e) = F_best(e), one of the values in the maximum, and
  `factor >= 1`; the same holds for any trial at or below the good trials' largest F_g(e);
* it never acts on low-Tr(F) failures: a trial is pruned only when its F_t(e) lies above every
  good trial's, so a run that fails with a small Tr(F) (a learning rate so large that it
  diverges, whose NaN Tr(F) records are not read, or that collapses Tr(F) to zero) is
  left to run. Stopping those is `MedianPruner`'s job (`FisherOrMedianPruner` does both).

Why the window and not the initialization. The trials of one study share the seed, hence the
initial weights and the initial Tr(F) F_0, whatever their learning rate. The study's first
definition (`early_fisher='v1'`, `analysis.early_fisher`: the maximum of Tr(F) from step 0
until the training accuracy reaches 0.8) therefore gives every trial a value >= F_0, and the
threshold is >= factor * F_0. Where Tr(F) falls after the initialization in every good trial
(the Fashion-MNIST MLP), every good value is F_0: a trial is pruned only when its Tr(F) exceeds
factor * F_0, however far the good trials fell below F_0, and a trial whose Tr(F) stays at F_0
looks exactly like the best one. The window never reads step 0, so the threshold is a multiple
of the good trials' own post-initialization level: `factor` keeps its meaning (how many times
higher than a good run at the same epoch). After epoch 7 no value changes (the window is
closed); the rule then changes only when the set of good trials does. The window is in epochs
(the same examples seen), not steps, so at a fixed epoch a large batch has taken fewer steps:
its Tr(F) may stay closer to F_0, and the rule treats that as the slow early phase it is. The
v1 definition stays selectable (`early_fisher='v1'`) to reproduce the old benchmark; it is not
the default.

A trial's curves are its logged metrics per epoch (the `TRIAL_METRICS` columns of its
metrics.jsonl), stored as the trial's user attribute `metrics` by `record_metrics`, with the
run's resolved config as the user attribute `config`. `experiments.tune` records both after
every epoch (`tune.report_epochs`); a user's own objective calls `record_metrics` before
`trial.report`.

Combinations
------------
`AnyPruner(*pruners)` prunes when any of its pruners does (each is asked every time, so a
stateful pruner such as `SuccessiveHalvingPruner` keeps its records); `FisherOrMedianPruner` is
the Fisher rule or Optuna's `MedianPruner` on the reported objective. A combination keeps no
guarantee of the Fisher rule beyond those its other member has: `MedianPruner` may prune the
eventual best trial, and stops low-Tr(F) failures on purpose.
"""

import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

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


def window_early_fisher(run: analysis.Run) -> float:
  """The early-phase Tr(F_i) of a run in progress: `analysis.early_fisher_window` so far.

  The mean of the logged Tr(F) over the records with 1 < epoch <= 7 logged so far; NaN while
  none is (at epoch 1 and before). Never reads the initialization (step 0).
  """
  return analysis.early_fisher_window(run, allow_unfinished=True)


def v1_early_fisher(run: analysis.Run) -> float:
  """The study's first early-phase Tr(F_i) of a run in progress (`analysis.early_fisher`).

  The maximum of the logged Tr(F) from step 0 up to the first epoch whose training accuracy
  reaches 0.8; before that epoch, the maximum so far (a lower bound of the final value). It
  includes the initial Tr(F), which the trials of one seed share (module docstring).
  """
  return analysis.early_fisher(run, allow_unfinished=True)


# The named early-phase definitions a `FisherExplosionPruner` accepts (`early_fisher=NAME`).
EARLY_FISHER = {'window': window_early_fisher, 'v1': v1_early_fisher}


def record_metrics(trial: optuna.trial.Trial, frame: pd.DataFrame,
                   config: Optional[Mapping[str, Any]] = None):
  """Stores a run's per-epoch curves (and its config) in `trial`'s user attributes.

  Args:
    trial: the running trial.
    frame: the run's metrics, one row per logged point ('step', 'epoch' and metric columns, as
      `analysis.read_metrics` returns); only the `TRIAL_METRICS` columns are kept.
    config: the run's resolved config as nested dicts (its config.json); stored once.
  """
  metrics = [m for m in TRIAL_METRICS if m in frame]
  columns = {name: frame[name].to_numpy(float) for name in ['epoch'] + metrics}
  records = []
  for i, step in enumerate(frame['step'].to_numpy()):
    values = {name: float(columns[name][i]) for name in metrics
              if columns[name][i] == columns[name][i]}  # x == x drops NaN.
    if values:  # A row with none of the metrics is left out.
      records.append({'step': int(step), 'epoch': float(columns['epoch'][i]), **values})
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


def _complete(study: optuna.Study) -> Sequence[optuna.trial.FrozenTrial]:
  return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


@functools.lru_cache(maxsize=4096)
def _named_early_fisher(name: str, records: Tuple[Tuple[Tuple[str, Any], ...], ...]) -> float:
  """`EARLY_FISHER[name]` of the curve `records` (each record a tuple of its items).

  Memoized on the curve's content: the named definitions read the records only (not the
  config), and every trial of a study asks for the good trials' values at every epoch (a
  replay of many orders, for the same curves again and again).
  """
  frame = pd.DataFrame.from_records([dict(r) for r in records]) if records else pd.DataFrame(
      {'step': pd.Series(dtype=int), 'epoch': pd.Series(dtype=float)})
  return EARLY_FISHER[name](analysis.Run(name='', path='', metrics=frame, config={}))


class FisherExplosionPruner(optuna.pruners.BasePruner):
  """Prunes a trial whose early Tr(F) is far above the good completed trials' (module docstring).

  Args:
    factor: the multiple (>= 1) of the good trials' largest early Tr(F) that prunes.
    warmup_epochs: no trial is pruned at an epoch below this (the step of `trial.report`).
    min_completed_trials: no trial is pruned before this many trials are COMPLETE.
    top_fraction: the share (0, 1] of COMPLETE trials, best objective first, taken as good.
    early_fisher: the early-phase Tr(F_i) of a run's curves so far: a name in `EARLY_FISHER`
      ('window', the default: the mean over epochs (1, 7]; 'v1': the study's first definition,
      the maximum from step 0 until training accuracy 0.8, to reproduce the old benchmark) or a
      function `analysis.Run -> float` (NaN when undefined: then nothing is pruned on it).
  """

  def __init__(self, *, factor: float = 2.0, warmup_epochs: int = 1,
               min_completed_trials: int = 3, top_fraction: float = 0.5,
               early_fisher: Union[str, Callable[[analysis.Run], float]] = 'window'):
    if not factor >= 1.0:
      raise ValueError(f'FisherExplosionPruner factor={factor} must be at least 1 (a smaller '
                       'factor could prune the best trial itself).')
    if warmup_epochs < 0 or min_completed_trials < 1:
      raise ValueError(f'FisherExplosionPruner warmup_epochs={warmup_epochs} must be >= 0 and '
                       f'min_completed_trials={min_completed_trials} >= 1.')
    if not 0.0 < top_fraction <= 1.0:
      raise ValueError(f'FisherExplosionPruner top_fraction={top_fraction} must be in (0, 1].')
    if isinstance(early_fisher, str):
      if early_fisher not in EARLY_FISHER:
        raise ValueError(f'FisherExplosionPruner early_fisher={early_fisher!r} is unknown; '
                         f'choose one of {list(EARLY_FISHER)} or pass a function.')
    self._named = early_fisher if isinstance(early_fisher, str) else None
    self.factor = factor
    self.warmup_epochs = warmup_epochs
    self.min_completed_trials = min_completed_trials
    self.top_fraction = top_fraction
    self.early_fisher = EARLY_FISHER[early_fisher] if self._named else early_fisher

  def good_trials(self, study: optuna.Study) -> Sequence[optuna.trial.FrozenTrial]:
    """The best `top_fraction` of the COMPLETE trials (at least one), best first."""
    done = [t for t in _complete(study) if t.value is not None and not math.isnan(t.value)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done.sort(key=lambda t: t.value, reverse=maximize)
    return done[:max(1, math.ceil(self.top_fraction * len(done)))] if done else []

  def value(self, trial: optuna.trial.FrozenTrial, epoch: float) -> float:
    """F_t(epoch): the early Tr(F) of `trial`'s recorded curves up to `epoch`."""
    if self._named is None:
      return self.early_fisher(trial_run(trial, epoch))
    records = trial.user_attrs.get(METRICS_ATTR, [])
    return _named_early_fisher(self._named, tuple(
        tuple(r.items()) for r in records if r['epoch'] <= epoch))

  def threshold(self, study: optuna.Study, epoch: float) -> float:
    """The early Tr(F) above which a trial at `epoch` is pruned (NaN: no rule yet)."""
    if len(_complete(study)) < self.min_completed_trials:
      return math.nan
    values = [self.value(t, epoch) for t in self.good_trials(study)]
    values = [v for v in values if not math.isnan(v)]
    return self.factor * max(values) if values else math.nan

  def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    epoch = trial.last_step
    if epoch is None or epoch < self.warmup_epochs:
      return False
    value = self.value(trial, epoch)
    if math.isnan(value):
      return False
    threshold = self.threshold(study, epoch)
    return not math.isnan(threshold) and value > threshold


class AnyPruner(optuna.pruners.BasePruner):
  """Prunes a trial when any of `pruners` would.

  Every member is asked at every call (no short cut), so a stateful member (Optuna's
  `SuccessiveHalvingPruner` records a trial's value at each rung it passes) sees each step as
  it would alone. `AnyPruner(a, b)` prunes a trial at epoch e iff `a` or `b` alone, in the same
  study, would prune it at e.
  """

  def __init__(self, *pruners: optuna.pruners.BasePruner):
    if not pruners:
      raise ValueError('AnyPruner needs at least one pruner; pass them as arguments.')
    self.pruners = tuple(pruners)

  def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    decisions = [pruner.prune(study, trial) for pruner in self.pruners]
    return any(decisions)


class FisherOrMedianPruner(AnyPruner):
  """The Fisher rule or Optuna's `MedianPruner`: prunes when either fires.

  The median rule prunes a trial at epoch e when its best reported objective so far is below
  the median of the COMPLETE trials' reports at e: it catches the low-accuracy failures the
  Fisher rule leaves alone by construction (a diverging learning rate, a learning rate too
  small to learn), while the Fisher rule catches trials whose accuracy still looks median but
  whose early Tr(F) is far above the good trials'. Both share `warmup_epochs` (MedianPruner's
  `n_warmup_steps`) and `min_completed_trials` (its `n_startup_trials`).

  Args:
    factor: the `FisherExplosionPruner`'s factor.
    warmup_epochs: no trial is pruned at an epoch below this, by either rule.
    min_completed_trials: no trial is pruned before this many are COMPLETE, by either rule.
    top_fraction: the `FisherExplosionPruner`'s share of good trials.
    early_fisher: the `FisherExplosionPruner`'s early-phase definition.

  Attributes:
    fisher: the `FisherExplosionPruner`.
    median: the `optuna.pruners.MedianPruner`.
  """

  def __init__(self, *, factor: float = 2.0, warmup_epochs: int = 1,
               min_completed_trials: int = 3, top_fraction: float = 0.5,
               early_fisher: Union[str, Callable[[analysis.Run], float]] = 'window'):
    self.fisher = FisherExplosionPruner(
        factor=factor, warmup_epochs=warmup_epochs, min_completed_trials=min_completed_trials,
        top_fraction=top_fraction, early_fisher=early_fisher)
    self.median = optuna.pruners.MedianPruner(n_startup_trials=min_completed_trials,
                                              n_warmup_steps=warmup_epochs)
    super().__init__(self.fisher, self.median)
