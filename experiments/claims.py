"""The study's claims C1-C5, each decided by one designated set of runs under fixed rules.

The rules are those of docs/experiments.md ("Claims and statistical rules"), fixed before the
CPU study ran:

* each claim has one effect size with a 95% confidence interval over independent runs
  (`fisher_jax.analysis.stats`): a ratio of geometric means for curvature, a difference of
  means for accuracies, a paired difference for seed-paired arms, Spearman's rho across
  learning rates;
* the verdict is 'held' only when the interval excludes "no effect" on the claimed side,
  'opposite' when it excludes it on the other side, 'not held' when it includes it, 'no data'
  when an arm has fewer than 2 usable runs;
* a run counts once in a claim: runs with equal training configs (`training_identity`: the
  config without its `experiment` labels and measurement, evaluation, logging and checkpoint
  cadences) are one run, wherever they were launched; diverged runs are never used;
* test accuracy is read at the best-validation evaluation (`summaries.test_at_best_val`).

Claims (runs):

* C1: at the small lr, Tr(F_i) is larger than at the tuned lr: ratio small/tuned > 1 (variants
  'small_lr' and 'tuned_lr' without penalty or label noise, per setting).
* C2: FP at the small lr lowers Tr(F_i) (ratio FP/small < 1) AND raises test accuracy
  (difference FP - small > 0); FP's strength is the one with the best mean validation accuracy
  (ties: the smaller).
* C3: across learning rates, Spearman rho(Tr(F_i), test accuracy) < 0 over the runs of the
  learning-rate axis: fisher_explosion's tuned/small runs and early_fisher's '<setting>/lr'
  runs, plain (no penalty, no label noise), each run once.
* C4: with noisy labels, FP slows the fitting of noisy examples more than of clean ones: per
  seed, s_k = 1 - A_k(FP) / A_k(none), A_k the mean over the logged points of
  `train_<k>/accuracy`; paired difference s_noisy - s_clean > 0 (FP strength chosen as in C2).
* C5: of the two flat_minima starts, the one with the lower mean Tr(F_i) in phase 1 ends phase
  2 at the lower Tr(H) (at phase 2's best-validation point): ratio < 1 over the phase-2 runs.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from fisher_jax.analysis import stats
from fisher_jax.analysis import summaries
from fisher_jax.analysis.runs import Run
from fisher_jax.training import config_files

HESSIAN = 'curvature/hessian_trace'
CONVERGED_ACCURACY = 0.99   # final-epoch training accuracy of a converged run (protocol)
MATCHED_FIT = 0.88          # training accuracy of the matched-fit comparison (protocol)
STATEMENTS = {
    'C1': 'at the small learning rate the early-phase Tr(F_i) is larger than at the tuned one '
          '(the paper: >= 3x)',
    'C2': 'the Fisher penalty at the small learning rate lowers Tr(F_i) and raises test '
          'accuracy',
    'C3': 'across learning rates, Tr(F_i) and test accuracy correlate negatively',
    'C4': 'with noisy labels, FP slows the fitting of noisy examples more than of clean ones',
    'C5': 'the start with the lower Tr(F_i) ends at the lower Tr(H) (a flatter minimum)',
}
# Config fields that do not change a run's training trajectory.
_NOT_TRAINING = ('experiment.', 'measure.', 'eval_every_epochs', 'checkpoint_every_epochs',
                 'log_every_steps', 'dataset.data_dir')


@dataclasses.dataclass
class ClaimResult:
  """A claim's verdict on the runs present.

  Attributes:
    key: 'C1' ... 'C5'.
    statement: the claim.
    verdict: one of stats.VERDICTS.
    effect: the deciding effect (None without data).
    evidence: sentences with the numbers.
    table: the numbers per arm / setting.
    runs: names of the runs the verdict used (each once).
    parts: further named effects (C2's two parts, C5's precondition, matched-fit accuracy).
  """
  key: str
  statement: str
  verdict: str
  effect: Optional[stats.Effect]
  evidence: str
  table: pd.DataFrame
  runs: List[str]
  parts: Dict[str, stats.Effect] = dataclasses.field(default_factory=dict)


def training_identity(run: Run) -> Tuple:
  """What makes two runs the same training run: the config without labels and cadences."""
  flat = config_files.flat_fields(run.config)
  return tuple(sorted((k, repr(v)) for k, v in flat.items()
                      if not any(k == p or k.startswith(p) for p in _NOT_TRAINING)))


def unique_runs(runs: Sequence[Run]) -> List[Run]:
  """`runs` with every training run once (the first by name), without diverged runs and runs
  that have not reached their last epoch."""
  seen, out = set(), []
  for run in sorted(runs, key=lambda r: r.name):
    key = training_identity(run)
    if key in seen or summaries.diverged(run) or not summaries.finished(run):
      continue
    seen.add(key)
    out.append(run)
  return out


def _plain(run: Run) -> bool:
  return (run.get('regularizer.name', 'none') == 'none'
          and not run.get('dataset.label_noise', 0.0))


def _setting(run: Run) -> str:
  return run.get('experiment.setting') or run.group.split('/')[0]


def baseline(runs: Sequence[Run], variant: str, setting: Optional[str] = None) -> List[Run]:
  """The plain runs labelled `variant` ('tuned_lr' or 'small_lr') of `setting`, each once."""
  return unique_runs([r for r in runs if r.variant == variant and _plain(r)
                      and (setting is None or _setting(r) == setting)])


def _values(runs, fn) -> List[float]:
  return [fn(r) for r in runs]


def _early(phase):
  return lambda r: summaries.early_value(r, phase)


def _n_text(effect: stats.Effect) -> str:
  return ' + '.join(str(k) for k in effect.n)


def _combine(verdicts: Sequence[str]) -> str:
  """One verdict from several settings: held only if held in every one."""
  verdicts = [v for v in verdicts if v != 'no data']
  if not verdicts:
    return 'no data'
  if all(v == 'held' for v in verdicts):
    return 'held'
  if all(v == 'opposite' for v in verdicts):
    return 'opposite'
  return 'not held'


def matched_fit_test_accuracy(run: Run, level: float = MATCHED_FIT) -> float:
  """Test accuracy at the first evaluation whose epoch's training accuracy is >= `level`
  (NaN if never reached): the accuracy comparison at equal fit of the training set."""
  if not (run.has('test/accuracy') and run.has('train/accuracy')):
    return math.nan
  rows = run.metrics[['step', 'train/accuracy', 'test/accuracy']].dropna()
  reached = rows[rows['train/accuracy'] >= level]
  return float(reached['test/accuracy'].iloc[0]) if len(reached) else math.nan


def final_train_accuracy(run: Run) -> float:
  return summaries.final_value(run, 'train/accuracy')


def converged(run: Run) -> bool:
  """The protocol's criterion: the last epoch's training accuracy >= CONVERGED_ACCURACY."""
  return bool(final_train_accuracy(run) >= CONVERGED_ACCURACY)


def settings_of(runs: Sequence[Run]) -> List[str]:
  return sorted({_setting(r) for r in runs if r.variant in ('tuned_lr', 'small_lr')})


def check_c1(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C1 per setting, on the plain small_lr and tuned_lr runs of any experiment (each once)."""
  rows, verdicts, used, effect = [], [], [], None
  for setting in settings_of(runs):
    small, tuned = baseline(runs, 'small_lr', setting), baseline(runs, 'tuned_lr', setting)
    if not (small and tuned):
      continue
    effect = stats.ratio(_values(small, _early(phase)), _values(tuned, _early(phase)))
    verdict = effect.verdict('greater')
    verdicts.append(verdict)
    used += [r.name for r in small + tuned]
    rows.append({'setting': setting, 'lr_small': small[0].get('optimizer.learning_rate'),
                 'lr_tuned': tuned[0].get('optimizer.learning_rate'),
                 'early_fisher_small': stats.format_mean_std(_values(small, _early(phase))),
                 'early_fisher_tuned': stats.format_mean_std(_values(tuned, _early(phase))),
                 'ratio': effect.estimate, 'low': effect.low, 'high': effect.high,
                 'n': _n_text(effect), 'verdict': verdict})
  table = pd.DataFrame(rows)
  evidence = '; '.join(
      f"{r.setting}: Tr(F_i) {r.early_fisher_small} at lr {r.lr_small:g} against "
      f"{r.early_fisher_tuned} at lr {r.lr_tuned:g}, ratio {r.ratio:.3g} [95% CI {r.low:.3g}, "
      f"{r.high:.3g}], n = {r.n} ({r.verdict})" for r in table.itertuples()) or (
          'no plain small_lr and tuned_lr runs')
  return ClaimResult('C1', STATEMENTS['C1'], _combine(verdicts), effect if len(rows) == 1
                     else None, evidence, table, used)


def select_strength(candidates: Sequence[Run]) -> Tuple[float, pd.DataFrame]:
  """(strength, table): the penalty strength with the highest mean best validation accuracy
  over its runs (ties: the smaller), and every strength's numbers."""
  rows = []
  for strength in sorted({float(r.get('regularizer.strength')) for r in candidates}):
    group = [r for r in candidates if float(r.get('regularizer.strength')) == strength]
    val = _values(group, lambda r: summaries.best_value(r, 'val/accuracy'))
    rows.append({'strength': strength, 'best_val_mean': float(np.mean(val)), 'n': len(group)})
  table = pd.DataFrame(rows)
  if not len(table):
    return math.nan, table
  best = table.best_val_mean.max()
  return float(table[table.best_val_mean == best].strength.min()), table


def _penalized(runs, name: str, *, noisy: bool) -> List[Run]:
  return unique_runs([r for r in runs if r.get('regularizer.name') == name
                      and bool(r.get('dataset.label_noise', 0.0)) == noisy
                      and not r.get('regularizer.start_epoch', 0.0)
                      and r.get('regularizer.every_k', 1) == 10
                      and r.experiment in ('regularizers', 'memorization')])


def check_c2(runs: Sequence[Run], phase: summaries.EarlyPhase,
             matched_fit: float = MATCHED_FIT) -> ClaimResult:
  """C2: FP (validation-selected strength, recomputed every 10 steps) vs the small lr."""
  fp_all = [r for r in _penalized(runs, 'fp', noisy=False) if r.experiment == 'regularizers']
  rows, parts, verdicts, used = [], {}, [], []
  effect = None
  for setting in settings_of(runs):
    small, tuned = baseline(runs, 'small_lr', setting), baseline(runs, 'tuned_lr', setting)
    lr_small = small[0].get('optimizer.learning_rate') if small else None
    candidates = [r for r in fp_all if _setting(r) == setting
                  and r.get('optimizer.learning_rate') == lr_small]
    strength, _ = select_strength(candidates)
    fp = [r for r in candidates if float(r.get('regularizer.strength')) == strength]
    if not (small and fp):
      continue
    trf = stats.ratio(_values(fp, _early(phase)), _values(small, _early(phase)))
    acc = stats.difference(_values(fp, summaries.test_at_best_val),
                           _values(small, summaries.test_at_best_val))
    fit = stats.difference(_values(fp, lambda r: matched_fit_test_accuracy(r, matched_fit)),
                           _values(small, lambda r: matched_fit_test_accuracy(r, matched_fit)))
    parts = {'Tr(F_i) ratio FP/small': trf, 'test accuracy FP - small': acc,
             f'matched-fit ({matched_fit:g}) test accuracy FP - small': fit}
    both = trf.verdict('less') == 'held' and acc.verdict('greater') == 'held'
    verdict = 'held' if both else ('no data' if 'no data' in (trf.verdict('less'),
                                                              acc.verdict('greater'))
                                   else 'not held')
    verdicts.append(verdict)
    effect = acc
    used += [r.name for r in small + fp]
    tuned_acc = float(np.mean(_values(tuned, summaries.test_at_best_val))) if tuned else math.nan
    small_acc = float(np.mean(_values(small, summaries.test_at_best_val)))
    fp_acc = float(np.mean(_values(fp, summaries.test_at_best_val)))
    gap = tuned_acc - small_acc
    rows.append({'setting': setting, 'fp_strength': strength,
                 'trf_ratio': trf.estimate, 'trf_low': trf.low, 'trf_high': trf.high,
                 'trf_verdict': trf.verdict('less'),
                 'acc_difference': acc.estimate, 'acc_low': acc.low, 'acc_high': acc.high,
                 'acc_verdict': acc.verdict('greater'),
                 'matched_fit_difference': fit.estimate, 'matched_fit_low': fit.low,
                 'matched_fit_high': fit.high, 'n': _n_text(acc),
                 'gap_closed': (fp_acc - small_acc) / gap if gap > 0 else math.nan,
                 'verdict': verdict})
  table = pd.DataFrame(rows)
  evidence = '; '.join(
      f"{r.setting}, FP strength {r.fp_strength:g} (chosen on validation): Tr(F_i) ratio "
      f"FP/small {r.trf_ratio:.3g} [95% CI {r.trf_low:.3g}, {r.trf_high:.3g}] "
      f"({r.trf_verdict}); test accuracy FP - small {r.acc_difference:+.4f} [95% CI "
      f"{r.acc_low:+.4f}, {r.acc_high:+.4f}] ({r.acc_verdict}), n = {r.n}; at matched fit "
      f"(train accuracy {matched_fit:g}) {r.matched_fit_difference:+.4f} [{r.matched_fit_low:+.4f}"
      f", {r.matched_fit_high:+.4f}]" + (f"; {r.gap_closed:.0%} of the tuned-small gap closed"
                                         if np.isfinite(r.gap_closed) else '')
      for r in table.itertuples()) or 'no FP runs with a small-lr baseline'
  return ClaimResult('C2', STATEMENTS['C2'], _combine(verdicts), effect, evidence, table, used,
                     parts)


def lr_axis_runs(runs: Sequence[Run]) -> List[Run]:
  """The plain runs of the learning-rate axis (C3), each once."""
  return unique_runs([
      r for r in runs if _plain(r) and (
          (r.experiment == 'fisher_explosion' and r.variant in ('tuned_lr', 'small_lr'))
          or (r.experiment == 'early_fisher' and r.group.endswith('/lr')))])


def check_c3(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C3 per setting: Spearman rho of Tr(F_i) against test accuracy over the lr-axis runs."""
  axis = lr_axis_runs(runs)
  rows, verdicts, used, effect = [], [], [], None
  for setting in sorted({_setting(r) for r in axis}):
    group = [r for r in axis if _setting(r) == setting]
    x, y = _values(group, _early(phase)), _values(group, summaries.test_at_best_val)
    rho = stats.correlation(x, y, 'spearman')
    effect = stats.correlation_effect(rho)
    verdict = effect.verdict('less') if rho.n >= 3 else 'no data'
    verdicts.append(verdict)
    used += [r.name for r in group]
    lrs = sorted({r.get('optimizer.learning_rate') for r in group})
    rows.append({'setting': setting, 'learning_rates': ' '.join(f'{v:g}' for v in lrs),
                 'spearman_rho': rho.r, 'low': rho.low, 'high': rho.high, 'n': rho.n,
                 'p_value': rho.p_value, 'verdict': verdict})
  table = pd.DataFrame(rows)
  evidence = '; '.join(
      f"{r.setting} (lr {r.learning_rates}): Spearman rho = {r.spearman_rho:.2f} [95% CI "
      f"{r.low:.2f}, {r.high:.2f}], n = {r.n} runs ({r.verdict})" for r in table.itertuples()
  ) or 'no learning-rate axis runs'
  return ClaimResult('C3', STATEMENTS['C3'], _combine(verdicts), effect, evidence, table, used)


def fitting_speed(run: Run, kind: str) -> float:
  """A_kind: the mean over the logged points of `train_<kind>/accuracy`."""
  return summaries.mean_value(run, f'train_{kind}/accuracy')


def check_c4(runs: Sequence[Run]) -> ClaimResult:
  """C4: paired by seed, the relative slowdown of fitting noisy minus clean examples."""
  noisy_runs = [r for r in runs if r.experiment == 'memorization']
  none = unique_runs([r for r in noisy_runs if r.get('regularizer.name', 'none') == 'none'])
  strength, _ = select_strength(_penalized(noisy_runs, 'fp', noisy=True))
  fp = [r for r in _penalized(noisy_runs, 'fp', noisy=True)
        if float(r.get('regularizer.strength')) == strength]
  by_seed = {int(r.get('seed')): r for r in none}
  pairs = [(by_seed[int(r.get('seed'))], r) for r in fp if int(r.get('seed')) in by_seed]
  rows = []
  for base, pen in pairs:
    s = {k: 1 - fitting_speed(pen, k) / fitting_speed(base, k) for k in ('clean', 'noisy')}
    rows.append({'seed': int(base.get('seed')), 'fp_strength': strength,
                 'clean_speed_none': fitting_speed(base, 'clean'),
                 'clean_speed_fp': fitting_speed(pen, 'clean'),
                 'noisy_speed_none': fitting_speed(base, 'noisy'),
                 'noisy_speed_fp': fitting_speed(pen, 'noisy'),
                 'clean_slowdown': s['clean'], 'noisy_slowdown': s['noisy']})
  table = pd.DataFrame(rows)
  if not len(table):
    return ClaimResult('C4', STATEMENTS['C4'], 'no data', None,
                       'no seed-paired memorization runs with and without FP', table, [])
  effect = stats.paired_difference(table.noisy_slowdown, table.clean_slowdown)
  verdict = effect.verdict('greater')
  evidence = (f"FP strength {strength:g} (chosen on validation), {len(table)} seed pairs: the "
              f"fitting of noisy labels slowed by {table.noisy_slowdown.mean():+.1%} and of clean "
              f"ones by {table.clean_slowdown.mean():+.1%}; paired difference "
              f"{effect.estimate:+.3f} [95% CI {effect.low:+.3f}, {effect.high:+.3f}], n = "
              f"{effect.n[0]} pairs ({verdict})")
  used = [r.name for pair in pairs for r in pair]
  return ClaimResult('C4', STATEMENTS['C4'], verdict, effect, evidence, table, used)


def check_c5(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C5 on the flat_minima runs: phase-1 Tr(F_i) per start, phase-2 Tr(H) at best validation."""
  flat = [r for r in runs if r.experiment == 'flat_minima']
  phase1 = unique_runs([r for r in flat if r.variant == 'phase1'])
  phase2 = unique_runs([r for r in flat if r.variant == 'phase2'])
  starts = sorted({r.group for r in phase1} & {r.group for r in phase2})
  rows = []
  for start in starts:
    p1 = [r for r in phase1 if r.group == start]
    p2 = [r for r in phase2 if r.group == start]
    rows.append({'start': start,
                 'phase1_early_fisher': float(np.exp(np.nanmean(np.log(
                     _values(p1, _early(phase)))))) if p1 else math.nan,
                 'phase1_early_fisher_text': stats.format_mean_std(_values(p1, _early(phase))),
                 'phase2_hessian_at_best_val': stats.format_mean_std(_values(
                     p2, lambda r: summaries.value_at_best(r, HESSIAN))),
                 'phase2_test_at_best_val': stats.format_mean_std(_values(
                     p2, summaries.test_at_best_val)), 'n_phase1': len(p1), 'n_phase2': len(p2)})
  table = pd.DataFrame(rows)
  if len(rows) != 2 or not np.isfinite(table.phase1_early_fisher).all():
    return ClaimResult('C5', STATEMENTS['C5'], 'no data', None,
                       'needs two flat_minima starts with phase-1 and phase-2 runs', table, [])
  low, high = table.sort_values('phase1_early_fisher').start.tolist()
  precondition = stats.ratio(_values([r for r in phase1 if r.group == low], _early(phase)),
                             _values([r for r in phase1 if r.group == high], _early(phase)))
  hess = lambda r: summaries.value_at_best(r, HESSIAN)
  effect = stats.ratio(_values([r for r in phase2 if r.group == low], hess),
                       _values([r for r in phase2 if r.group == high], hess))
  verdict = effect.verdict('less')
  evidence = (f"phase 1: start '{low}' Tr(F_i) "
              f"{table.set_index('start').phase1_early_fisher_text[low]} against '{high}' "
              f"{table.set_index('start').phase1_early_fisher_text[high]} ("
              f"{precondition.describe()}); phase 2, Tr(H) at the best-validation point: "
              f"'{low}' {table.set_index('start').phase2_hessian_at_best_val[low]}, '{high}' "
              f"{table.set_index('start').phase2_hessian_at_best_val[high]}; ratio "
              f"{effect.estimate:.3g} [95% CI {effect.low:.3g}, {effect.high:.3g}], n = "
              f"{_n_text(effect)} ({verdict})")
  used = [r.name for r in phase1 + phase2 if r.group in starts]
  return ClaimResult('C5', STATEMENTS['C5'], verdict, effect, evidence, table, used,
                     {'phase-1 Tr(F_i) ratio (lower/higher start)': precondition})


def check_all(runs: Sequence[Run], phase: summaries.EarlyPhase) -> List[ClaimResult]:
  """C1-C5 on `runs` (every run of a study root) with the early-phase definition `phase`."""
  return [check_c1(runs, phase), check_c2(runs, phase), check_c3(runs, phase), check_c4(runs),
          check_c5(runs, phase)]
