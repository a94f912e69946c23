"""The confirmatory study (protocol v2): per-run summaries, the claims C0-C5 and their report.

  python -m experiments.report --study confirmatory --root ROOT --out docs/study_confirmatory \
      [--timing TIMING.json]

It reads the runs of the sweep `confirmatory` under ROOT (config.json and metrics.jsonl of
ROOT/confirmatory/<arm>_s<seed>/; arms and protocol constants in configs/confirmatory.py) and
decides each claim under the protocol's rules (docs/experiments.md, "Protocol v2"):

* Every run is summarized once (`summarize`): its convergence epoch E (the first epoch whose
  `train_full/accuracy` reaches its config's `stop.train_accuracy`), its converged test accuracy
  (the mean of `test/accuracy` over epochs E..E + stop.extra_epochs), the primary Tr(F_i) (the
  mean of Tr(F) over epochs (1, 7], never step 0: `summaries.early_fisher_window`) and the
  sensitivity definitions (`SENSITIVITY`).
* Arms are compared run against run of the same seed (config `seed`: same initialization, same
  data order): a paired ratio (geometric mean of the per-seed ratios) for curvature, a paired
  difference for accuracies; C3's Spearman rho has a bootstrap interval that resamples seeds.
* Each test is one-sided at ALPHA, read off the two-sided interval of level 1 - 2 ALPHA / k
  (k: the claim's number of tests, Bonferroni). A test is 'held' only when its interval excludes
  no effect on the claimed side AND its point estimate reaches the claim's minimum effect
  (MIN_EFFECT), 'opposite' when the interval excludes no effect on the other side, else
  'not held'; 'no data' with fewer than 2 usable pairs.
* A diverged run makes its arm ineligible for every test that uses the arm (the verdict names
  the run); a run still going (or stopped before its end) is left out.
* Accuracies are compared at convergence. When a test's runs did not all converge, they are
  compared at the highest fit all of them reached, L = min over the runs of their best
  `train_full/accuracy`, each run's test accuracy read at its first evaluation at or after the
  first epoch it reached L (`summaries.value_at_fit`); the test says so.
* C0 is the gate: without a generalization gap between eta* and eta_s, the accuracy parts of C2
  and C3 are reported as "no generalization gap in this testbed" (their numbers shown).
* The sensitivity definitions of Tr(F_i) give numbers only (estimate and interval), no verdict.
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from configs import confirmatory as protocol
from experiments import plots
from experiments import report
from fisher_jax.analysis import stats
from fisher_jax.analysis import summaries
from fisher_jax.analysis.runs import load_runs
from fisher_jax.analysis.runs import Run
from fisher_jax.training import fit_stop

EXPERIMENT = 'confirmatory'
FISHER = summaries.FISHER
HESSIAN = 'curvature/hessian_trace'
HESSIAN_STDERR = 'curvature/hessian_trace_stderr'
TEST = 'test/accuracy'
TRAIN_FULL = summaries.TRAIN_FULL_ACCURACY

# Arms (configs/confirmatory.py names them the same way).
STAR = f'lr_{protocol.ETA_STAR:g}'
SMALL = f'lr_{protocol.ETA_S:g}'
LR_ARMS = tuple(f'lr_{lr:g}' for lr in protocol.LR_AXIS)
BATCH_ARMS = (STAR,) + tuple(f'bs_{b}' for b in protocol.BATCH_AXIS[1:])
FP_ARMS = tuple(f'fp_{s:g}' for s in protocol.FP_STRENGTHS)
NOISY_NONE, NOISY_FP, NOISY_HALF_LR = 'noisy_none', 'noisy_fp', 'noisy_half_lr'
PHASE1_FP, PHASE1_NONE, PHASE2_FP, PHASE2_NONE = (
    'phase1_fp', 'phase1_none', 'phase2_fp', 'phase2_none')
LENET_ARMS = (f'lenet_lr_{protocol.ETA_STAR:g}', f'lenet_lr_{protocol.ETA_S:g}')

# Analysis constants of the protocol that configs/confirmatory.py does not hold.
FIT_SENSITIVITY = 0.8        # Tr(F) at the first epoch end with train_full accuracy >= this
STEP_WINDOW = (50, 200)      # the step-window sensitivity definition: steps (50, 200]
CONTROL_MATCH = (0.5, 2.0)   # C4: clean slowdown FP / half_lr within this range: matched
PAPER_C1_RATIO = 3.0         # the paper's Tr(F_i) ratio eta_s / eta* (about 3 or more)
EARLY_PLOT_EPOCHS = 10.0     # the Tr(F) curves show epochs 0..10

NO_GAP = 'no generalization gap in this testbed'
_UNUSABLE = ('diverged', 'incomplete')
STATEMENTS = {
    'C0': f'eta* ({protocol.ETA_STAR:g}) generalizes better than eta_s ({protocol.ETA_S:g}): '
          'converged test accuracy is higher (the gate of C2 and C3\'s accuracy parts)',
    'C1': 'at eta_s the early-phase Tr(F_i) is larger than at eta* (the paper: about 3x)',
    'C2': 'the Fisher penalty at eta_s lowers Tr(F_i) and raises converged test accuracy (at '
          'one strength at least)',
    'C3': 'Tr(F_i) and converged test accuracy correlate negatively across learning rates and '
          'across batch sizes',
    'C4': 'with noisy labels, FP slows the fitting of noisy examples more than of clean ones, '
          'beyond a learning-rate control of matched clean slowdown',
    'C5': 'a phase 1 with FP (lower Tr(F_i)) leads phase 2 to a flatter minimum (lower Tr(H) at '
          'convergence)',
}


# ----------------------------------------------------------------------------- per-run numbers


@dataclasses.dataclass(frozen=True)
class Definition:
  """One definition of the early-phase Tr(F_i).

  Attributes:
    key: its column in the summary table.
    text: what it is, for reports.
    value: run -> Tr(F_i) (NaN where undefined).
  """
  key: str
  text: str
  value: Callable[[Run], float]


def _window(run: Run, **kwargs) -> float:
  """`summaries.early_fisher_window` over the protocol's window (1, 7]."""
  start, end = protocol.WINDOW
  return summaries.early_fisher_window(run, start_epoch=start, end_epoch=end, **kwargs)


_W = f'({protocol.WINDOW[0]:g}, {protocol.WINDOW[1]:g}]'
PRIMARY = Definition('trf', f'mean Tr(F) over epochs {_W}', _window)
SENSITIVITY = (
    Definition('trf_max', f'max Tr(F) over epochs {_W}', lambda r: _window(r, reduce='max')),
    Definition('trf_at_fit', f'Tr(F) at the first epoch end with train_full accuracy >= '
               f'{FIT_SENSITIVITY:g}',
               lambda r: summaries.value_at_fit(r, FIT_SENSITIVITY, metric=FISHER)),
    Definition('trf_steps', f'mean Tr(F) over steps ({STEP_WINDOW[0]}, {STEP_WINDOW[1]}]',
               lambda r: summaries.early_fisher_window(r, steps=STEP_WINDOW)),
    Definition('trf_over_init', f'mean Tr(F) over epochs {_W} / Tr(F) at step 0',
               lambda r: _window(r, relative_to_init=True)),
)
DEFINITIONS = (PRIMARY,) + SENSITIVITY


def arm_of(run: Run) -> str:
  """The run's arm: its config's `experiment.group` (= `experiment.variant`)."""
  return run.group or run.variant


def status_of(run: Run) -> str:
  """'diverged', 'incomplete' (still going, or stopped before its end), 'converged',
  'unconverged' (reached its epoch cap first) or 'fixed budget' (no fit target)."""
  if summaries.diverged(run):
    return 'diverged'
  target = float(run.get('stop.train_accuracy') or 0.0)
  epochs = int(run.get('num_epochs') or 0)
  converged_at = summaries.convergence_epoch(run)
  end = fit_stop.end_epoch(converged_at, int(run.get('stop.extra_epochs') or 0),
                           epochs) if target > 0 else epochs
  last = float(run.metrics['epoch'].max()) if len(run.metrics) else 0.0
  if last < end - 1e-6:
    return 'incomplete'
  if not target > 0:
    return 'fixed budget'
  return 'converged' if converged_at is not None else 'unconverged'


COLUMNS = ('run', 'arm', 'seed', 'learning_rate', 'batch_size', 'status', 'diverged',
           'convergence_epoch', 'final_train_full', 'max_train_full', 'converged_test',
           'trf_init') + tuple(d.key for d in DEFINITIONS) + ('hessian', 'hessian_se')


def summarize(run: Run) -> Dict[str, Any]:
  """The run's numbers: one row of the study's table.

  Keys: run, arm, seed, learning_rate, batch_size, status, diverged, convergence_epoch (NaN
  unless converged), final_train_full and max_train_full (`train_full/accuracy`),
  converged_test (mean test accuracy over epochs E..E + extra; NaN unless converged), trf_init
  (Tr(F) at step 0), one key per Tr(F_i) definition (`DEFINITIONS`: 'trf' is the primary),
  hessian (mean Tr(H) over epochs E..E + extra) and hessian_se (its standard error,
  sqrt(sum_e se_e^2) / k over the k epochs, from `curvature/hessian_trace_stderr`).
  """
  status = status_of(run)
  converged = status == 'converged'
  converged_at = summaries.convergence_epoch(run)
  errors = summaries.converged_values(run, HESSIAN_STDERR) if converged else np.zeros(0)
  row = {
      'run': run.name, 'arm': arm_of(run), 'seed': int(run.get('seed', -1)),
      'learning_rate': run.get('optimizer.learning_rate'), 'batch_size': run.get('batch_size'),
      'status': status, 'diverged': status == 'diverged',
      'convergence_epoch': float(converged_at) if converged_at is not None else math.nan,
      'final_train_full': summaries.final_value(run, TRAIN_FULL),
      'max_train_full': summaries.best_value(run, TRAIN_FULL),
      'converged_test': summaries.converged_value(run, TEST) if converged else math.nan,
      'trf_init': summaries.initial_value(run)}
  row.update({d.key: d.value(run) for d in DEFINITIONS})
  row['hessian'] = summaries.converged_value(run, HESSIAN) if converged else math.nan
  row['hessian_se'] = (float(np.sqrt(np.sum(errors ** 2)) / len(errors)) if len(errors)
                       else math.nan)
  return row


@dataclasses.dataclass
class Study:
  """The study's runs and their summaries.

  Attributes:
    runs: run name -> `Run`.
    table: one row per run (`summarize`), sorted by arm and seed.
  """
  runs: Dict[str, Run]
  table: pd.DataFrame

  def usable(self, arms: Sequence[str]) -> pd.DataFrame:
    """The rows of `arms` that a claim may use (neither diverged nor incomplete)."""
    rows = self.table[self.table.arm.isin(list(arms))]
    return rows[~rows.status.isin(_UNUSABLE)]

  def diverged(self, arms: Sequence[str]) -> pd.DataFrame:
    """The diverged runs of `arms`."""
    return self.table[self.table.arm.isin(list(arms)) & self.table.diverged]


def make_study(runs: Sequence[Run]) -> Study:
  """Summarizes `runs` (the confirmatory runs, in any order).

  Raises:
    ValueError: two runs have the same arm and seed (a pair must be unique).
  """
  table = pd.DataFrame([summarize(r) for r in runs], columns=list(COLUMNS))
  table['diverged'] = table['diverged'].astype(bool)
  twice = table[table.duplicated(['arm', 'seed'], keep=False)]
  if len(twice):
    raise ValueError(f'runs {sorted(twice.run)} share arm and seed; keep one run per arm and '
                     'seed under the root.')
  table = table.sort_values(['arm', 'seed'], kind='stable').reset_index(drop=True)
  return Study({r.name: r for r in runs}, table)


def load_study(root: str) -> Study:
  """The confirmatory runs under `root` (config `experiment.name` 'confirmatory', any depth)."""
  return make_study(load_runs(root, experiment=EXPERIMENT))


# ----------------------------------------------------------------------------- tests of claims


@dataclasses.dataclass
class Comparison:
  """One test of a claim (or a number reported with it).

  Attributes:
    label: what is compared, e.g. 'Tr(F_i) lr_0.015 / lr_0.15'.
    effect: the effect with its interval (None when nothing could be compared).
    direction: the claimed side, 'greater' or 'less'.
    minimum: the minimum effect 'held' needs (None: none).
    verdict: 'held', 'not held', 'opposite', 'no data ...', NO_GAP, or '' for a number reported
      without a test.
    note: e.g. 'compared below convergence at train accuracy 0.97'.
    unit: what n counts ('pairs', 'runs').
  """
  label: str
  effect: Optional[stats.Effect]
  direction: str
  minimum: Optional[float]
  verdict: str
  note: str = ''
  unit: str = 'pairs'

  def text(self) -> str:
    """'label: estimate [98% CI low, high], n = 5 pairs (verdict; note)'."""
    words = [w for w in (self.verdict, self.note) if w]
    return (f'{self.label}: {_effect_text(self.effect, self.unit)}'
            + (f' ({"; ".join(words)})' if words else ''))


@dataclasses.dataclass
class ClaimResult:
  """A claim's verdict.

  Attributes:
    key: 'C0' ... 'C5'.
    statement: the claim.
    verdict: the claim's verdict.
    comparisons: its tests (the deciding ones first) and the numbers reported with them.
    evidence: sentences with the numbers.
    table: its numbers per seed or per run (written as claim_<key>.csv).
  """
  key: str
  statement: str
  verdict: str
  comparisons: List[Comparison]
  evidence: str
  table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def _number(value: float, digits: int = 3) -> str:
  return f'{value:.{digits}g}' if np.isfinite(value) else 'undefined'


def _effect_text(effect: Optional[stats.Effect], unit: str = 'pairs') -> str:
  """'1.84 [98% CI 1.52, 2.2], n = 5 pairs' (numbers only)."""
  if effect is None:
    return 'undefined, n = 0'
  n = effect.n[0] if len(effect.n) == 1 else ' + '.join(str(k) for k in effect.n)
  if not np.isfinite(effect.estimate):
    return f'undefined, n = {n} {unit}'
  interval = (f' [{effect.confidence:.0%} CI {_number(effect.low)}, {_number(effect.high)}]'
              if np.isfinite(effect.low) else ' (no interval)')
  return f'{_number(effect.estimate)}{interval}, n = {n} {unit}'


def _ineligible(study: Study, arms: Sequence[str]) -> str:
  """'' when no run of `arms` diverged, else the verdict 'no data (arm ineligible: ...)'."""
  broken = study.diverged(arms)
  if not len(broken):
    return ''
  parts = [f'{arm}: {", ".join(group.run)} diverged' for arm, group in broken.groupby('arm')]
  return f'no data (arm ineligible: {"; ".join(parts)})'


def _by_seed(study: Study, arm: str, values) -> pd.Series:
  """`values` (a column of the table, or a Series by run name) of the arm's usable runs, by
  seed."""
  rows = study.usable([arm])
  if isinstance(values, str):
    series = rows[values]
  else:
    series = rows.run.map(values).astype(float)
  return pd.Series(series.to_numpy(float), index=rows.seed.to_numpy(int))


def _paired(study: Study, arm_a: str, arm_b: str, values) -> Tuple[np.ndarray, np.ndarray]:
  """The values of two arms on their common seeds, in seed order (pairing by seed)."""
  a, b = _by_seed(study, arm_a, values), _by_seed(study, arm_b, values)
  seeds = sorted(set(a.index) & set(b.index))
  return a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)


def paired_effect(study: Study, arm_a: str, arm_b: str, values, *, ratio: bool,
                  confidence: float) -> stats.Effect:
  """The paired effect of arm_a against arm_b: `stats.paired_ratio` (ratio=True) or
  `stats.paired_difference` of `values` (a table column or a Series by run name)."""
  a, b = _paired(study, arm_a, arm_b, values)
  return (stats.paired_ratio if ratio else stats.paired_difference)(a, b, confidence=confidence)


def accuracies(study: Study, arms: Sequence[str]) -> Tuple[pd.Series, Optional[float]]:
  """(test accuracy by run name, L): the converged test accuracy when every usable run of
  `arms` converged (L None); else every run's test accuracy at the highest common fit
  L = min over the runs of max train_full/accuracy (`summaries.value_at_fit`)."""
  rows = study.usable(arms)
  if not len(rows) or (rows.status == 'converged').all():
    return pd.Series(rows.converged_test.to_numpy(float), index=rows.run), None
  level = float(rows.max_train_full.min())
  return pd.Series({name: summaries.value_at_fit(study.runs[name], level)
                    for name in rows.run}, dtype=float), level


def _below(level: Optional[float]) -> str:
  return '' if level is None else f'compared below convergence at train accuracy {level:.4g}'


def _compare(study: Study, label: str, arms: Tuple[str, str], values, *, ratio: bool,
             direction: str, minimum: Optional[float], confidence: float,
             note: str = '') -> Comparison:
  """A paired test of arms[0] against arms[1] with its verdict."""
  effect = paired_effect(study, *arms, values, ratio=ratio, confidence=confidence)
  verdict = _ineligible(study, arms) or effect.verdict(direction, minimum)
  return Comparison(label, effect, direction, minimum, verdict, note)


def axis_correlation(study: Study, arms: Sequence[str], x: str, accuracy: pd.Series, *,
                     confidence: float) -> stats.Correlation:
  """Spearman rho of `x` (a Tr(F_i) column) with `accuracy` (by run name) over the usable runs
  of `arms`, its percentile bootstrap interval resampling seeds (a seed's runs together)."""
  rows = study.usable(arms)
  return stats.correlation(rows[x].to_numpy(float), rows.run.map(accuracy).to_numpy(float),
                           'spearman', confidence=confidence, clusters=rows.seed.to_numpy(int))


def _combine(verdicts: Sequence[str]) -> str:
  """A conjunction's verdict: 'held' if every test held, 'opposite' if every one is opposite,
  the first 'no data ...' if a test has none, else 'not held'."""
  if verdicts and all(v == 'held' for v in verdicts):
    return 'held'
  missing = [v for v in verdicts if v.startswith('no data')]
  if missing or not verdicts:
    return missing[0] if missing else 'no data'
  if all(v == 'opposite' for v in verdicts):
    return 'opposite'
  return 'not held'


def _alpha_confidence(tests: int = 1) -> float:
  return stats.one_sided_confidence(protocol.ALPHA, tests)


def check_c0(study: Study) -> ClaimResult:
  """C0 (the gate): paired difference of converged test accuracy eta* - eta_s > 0."""
  acc, level = accuracies(study, (STAR, SMALL))
  test = _compare(study, f'test accuracy {STAR} - {SMALL}', (STAR, SMALL), acc, ratio=False,
                  direction='greater', minimum=protocol.MIN_EFFECT['C0'],
                  confidence=_alpha_confidence(), note=_below(level))
  evidence = (f'{test.text()}; minimum effect +{protocol.MIN_EFFECT["C0"]:g}. '
              + ('' if test.verdict == 'held' else
                 f'Without it, the accuracy parts of C2 and C3 read "{NO_GAP}".'))
  return ClaimResult('C0', STATEMENTS['C0'], test.verdict, [test], evidence.strip())


def check_c1(study: Study, gate: Optional[ClaimResult] = None) -> ClaimResult:
  """C1: paired ratio of Tr(F_i) eta_s / eta* > 1 (minimum 1.5), against the paper's 3."""
  del gate  # C1 is about curvature only
  test = _compare(study, f'Tr(F_i) {SMALL} / {STAR}', (SMALL, STAR), PRIMARY.key, ratio=True,
                  direction='greater', minimum=protocol.MIN_EFFECT['C1'],
                  confidence=_alpha_confidence())
  e = test.effect
  paper = ''
  if np.isfinite(e.low):
    inside = e.low <= PAPER_C1_RATIO <= e.high
    paper = (f'The paper reports about {PAPER_C1_RATIO:g}x; the interval '
             f'{"includes" if inside else "excludes"} {PAPER_C1_RATIO:g}.')
  evidence = f'{test.text()}; minimum effect {protocol.MIN_EFFECT["C1"]:g}. {paper}'
  return ClaimResult('C1', STATEMENTS['C1'], test.verdict, [test], evidence.strip())


def _gate_held(gate: Optional[ClaimResult]) -> bool:
  return gate is None or gate.verdict == 'held'


def check_c2(study: Study, gate: Optional[ClaimResult] = None) -> ClaimResult:
  """C2, per FP strength (Bonferroni over the strengths): paired ratio Tr(F_i) FP / eta_s < 1
  (minimum 1/1.5) AND paired difference of converged test accuracy FP - eta_s > 0 (minimum
  0.005); held when both parts hold at one strength at least."""
  confidence = _alpha_confidence(len(FP_ARMS))
  tests, strength_verdicts, rows = [], [], []
  for arm in FP_ARMS:
    trf = _compare(study, f'Tr(F_i) {arm} / {SMALL}', (arm, SMALL), PRIMARY.key, ratio=True,
                   direction='less', minimum=protocol.MIN_EFFECT['C2_trf'],
                   confidence=confidence)
    acc_values, level = accuracies(study, (arm, SMALL))
    acc = _compare(study, f'test accuracy {arm} - {SMALL}', (arm, SMALL), acc_values,
                   ratio=False, direction='greater', minimum=protocol.MIN_EFFECT['C2_acc'],
                   confidence=confidence, note=_below(level))
    if not _gate_held(gate) and not acc.verdict.startswith('no data'):
      acc.verdict = NO_GAP
    both = _combine([trf.verdict, acc.verdict]) if acc.verdict != NO_GAP else NO_GAP
    strength_verdicts.append(both)
    tests += [trf, acc]
    rows.append({'arm': arm, 'trf_ratio': trf.effect.estimate, 'trf_low': trf.effect.low,
                 'trf_high': trf.effect.high, 'trf_verdict': trf.verdict,
                 'acc_difference': acc.effect.estimate, 'acc_low': acc.effect.low,
                 'acc_high': acc.effect.high, 'acc_verdict': acc.verdict,
                 'compared_at_fit': level, 'n': acc.effect.n[0], 'verdict': both})
  if not _gate_held(gate):  # the curvature part stands on its own
    verdict = f'{NO_GAP} (Tr(F_i) part: ' + ', '.join(
        f'{arm} {t.verdict}' for arm, t in zip(FP_ARMS, tests[::2])) + ')'
  elif 'held' in strength_verdicts:
    verdict = 'held'
  elif all(v.startswith('no data') for v in strength_verdicts):
    verdict = strength_verdicts[0]
  else:
    verdict = 'not held'
  evidence = (f'{confidence:.0%} intervals (Bonferroni over {len(FP_ARMS)} strengths); '
              f'minimum effects: Tr(F_i) ratio <= {protocol.MIN_EFFECT["C2_trf"]:.3g}, accuracy '
              f'+{protocol.MIN_EFFECT["C2_acc"]:g}. ' + '; '.join(
                  f'{arm}: {t.text()}; {a.text()} -> {v}'
                  for arm, t, a, v in zip(FP_ARMS, tests[::2], tests[1::2], strength_verdicts)))
  return ClaimResult('C2', STATEMENTS['C2'], verdict, tests, evidence, pd.DataFrame(rows))


AXES = (('learning-rate axis', LR_ARMS), ('batch-size axis', BATCH_ARMS))


def check_c3(study: Study, gate: Optional[ClaimResult] = None) -> ClaimResult:
  """C3, per axis (Bonferroni over the two axes): Spearman rho of Tr(F_i) with converged test
  accuracy < 0 (minimum -0.3), the interval resampling seeds; held when held on both axes."""
  confidence = _alpha_confidence(len(AXES))
  tests, rows = [], []
  for name, arms in AXES:
    acc, level = accuracies(study, arms)
    rho = axis_correlation(study, arms, PRIMARY.key, acc, confidence=confidence)
    effect = stats.correlation_effect(rho)
    verdict = _ineligible(study, arms) or effect.verdict('less', protocol.MIN_EFFECT['C3'])
    if not _gate_held(gate) and not verdict.startswith('no data'):
      verdict = NO_GAP
    seeds = study.usable(arms).seed.nunique()
    tests.append(Comparison(f'Spearman rho, {name} ({", ".join(arms)})', effect, 'less',
                            protocol.MIN_EFFECT['C3'], verdict, '; '.join(w for w in (
                                f'{seeds} seeds resampled', _below(level)) if w), unit='runs'))
    rows.append({'axis': name, 'arms': ' '.join(arms), 'rho': rho.r, 'low': rho.low,
                 'high': rho.high, 'p_value': rho.p_value, 'n_runs': rho.n, 'n_seeds': seeds,
                 'compared_at_fit': level, 'verdict': verdict})
  verdicts = [t.verdict for t in tests]
  verdict = NO_GAP if not _gate_held(gate) else _combine(verdicts)
  evidence = (f'{confidence:.0%} percentile bootstrap intervals over seeds (Bonferroni over 2 '
              f'axes); minimum effect rho <= {protocol.MIN_EFFECT["C3"]:g}. '
              + '; '.join(t.text() for t in tests))
  return ClaimResult('C3', STATEMENTS['C3'], verdict, tests, evidence, pd.DataFrame(rows))


def fitting_speed(run: Run, kind: str) -> float:
  """A_kind: the mean of `train_<kind>/accuracy` over the run's epoch-end points ('clean' or
  'noisy'; step 0 and in-epoch measurements left out)."""
  return summaries.mean_value(run, f'train_{kind}/accuracy', epoch_ends=True)


def c4_table(study: Study) -> pd.DataFrame:
  """Per seed with all three noisy-label arms usable: A_k(arm) and, for the FP and half-lr
  arms, s_k = 1 - A_k(arm) / A_k(noisy_none) and d = s_noisy - s_clean."""
  arms = (NOISY_NONE, NOISY_FP, NOISY_HALF_LR)
  rows = study.usable(arms)
  out = []
  for seed, group in rows.groupby('seed'):
    by_arm = {r.arm: study.runs[r.run] for r in group.itertuples()}
    if set(by_arm) != set(arms):
      continue
    row = {'seed': int(seed)}
    for arm, run in by_arm.items():
      for kind in ('clean', 'noisy'):
        row[f'A_{kind}_{arm}'] = fitting_speed(run, kind)
    for arm in (NOISY_FP, NOISY_HALF_LR):
      for kind in ('clean', 'noisy'):
        row[f's_{kind}_{arm}'] = 1 - row[f'A_{kind}_{arm}'] / row[f'A_{kind}_{NOISY_NONE}']
      row[f'd_{arm}'] = row[f's_noisy_{arm}'] - row[f's_clean_{arm}']
    out.append(row)
  return pd.DataFrame(out)


def check_c4(study: Study, gate: Optional[ClaimResult] = None) -> ClaimResult:
  """C4: paired difference d(noisy_fp) - d(noisy_half_lr) > 0 (minimum 0.05), with d(noisy_fp)
  alone, both arms' clean slowdowns and whether the control matched FP's clean slowdown."""
  del gate
  confidence = _alpha_confidence()
  table = c4_table(study)
  ineligible = _ineligible(study, (NOISY_NONE, NOISY_FP, NOISY_HALF_LR))
  empty = np.zeros(0)
  col = lambda name: table[name].to_numpy(float) if name in table else empty  # noqa: E731
  d_fp, d_half = col(f'd_{NOISY_FP}'), col(f'd_{NOISY_HALF_LR}')
  effect = stats.paired_difference(d_fp, d_half, confidence=confidence)
  primary = Comparison(f'd({NOISY_FP}) - d({NOISY_HALF_LR})', effect, 'greater',
                       protocol.MIN_EFFECT['C4'],
                       ineligible or effect.verdict('greater', protocol.MIN_EFFECT['C4']))
  alone = dataclasses.replace(stats.paired_difference(d_fp, np.zeros_like(d_fp),
                                                      confidence=confidence), kind='mean')
  fp_alone = Comparison(f'd({NOISY_FP}) alone', alone, 'greater', None, '')
  clean_fp = float(np.mean(col(f's_clean_{NOISY_FP}'))) if len(table) else math.nan
  clean_half = float(np.mean(col(f's_clean_{NOISY_HALF_LR}'))) if len(table) else math.nan
  match = clean_fp / clean_half if clean_half else math.nan
  matched = ('control undetermined' if not np.isfinite(match) else 'control matched'
             if CONTROL_MATCH[0] <= match <= CONTROL_MATCH[1] else 'control not matched')
  evidence = (f'per seed, A_k = mean train_k accuracy over the epoch ends, s_k = 1 - '
              f'A_k(arm) / A_k({NOISY_NONE}), d = s_noisy - s_clean. {primary.text()}; minimum '
              f'effect +{protocol.MIN_EFFECT["C4"]:g}. {fp_alone.text()}. Mean clean slowdown: '
              f'{NOISY_FP} {clean_fp:+.3f}, {NOISY_HALF_LR} {clean_half:+.3f}; ratio '
              f'{_number(match)} ({matched}: within [{CONTROL_MATCH[0]:g}, '
              f'{CONTROL_MATCH[1]:g}] is matched)')
  return ClaimResult('C4', STATEMENTS['C4'], primary.verdict, [primary, fp_alone], evidence,
                     table)


def check_c5(study: Study, gate: Optional[ClaimResult] = None) -> ClaimResult:
  """C5: the manipulation check (phase-1 Tr(F_i) ratio FP / none < 1) first, then the paired
  ratio of Tr(H) at convergence phase2_fp / phase2_none < 1 (minimum 0.9)."""
  del gate
  confidence = _alpha_confidence()
  check = _compare(study, f'phase-1 Tr(F_i) {PHASE1_FP} / {PHASE1_NONE}',
                   (PHASE1_FP, PHASE1_NONE), PRIMARY.key, ratio=True, direction='less',
                   minimum=None, confidence=confidence)
  hessian = _compare(study, f'Tr(H) at convergence {PHASE2_FP} / {PHASE2_NONE}',
                     (PHASE2_FP, PHASE2_NONE), 'hessian', ratio=True, direction='less',
                     minimum=protocol.MIN_EFFECT['C5'], confidence=confidence)
  verdict = hessian.verdict if check.verdict == 'held' else (
      f'not testable (manipulation check: {check.verdict})')
  rows = study.usable((PHASE2_FP, PHASE2_NONE))
  table = rows[['run', 'arm', 'seed', 'status', 'hessian', 'hessian_se', 'converged_test']]
  branches = '; '.join(
      f'{arm}: Tr(H) ' + ', '.join(f'{_number(h, 4)} ± {_number(se, 2)}'
                                   for h, se in zip(g.hessian, g.hessian_se))
      + ' (± standard error), converged test accuracy '
      + stats.format_mean_std(g.converged_test.to_numpy(float))
      for arm, g in rows.groupby('arm'))
  unconverged = rows[rows.status != 'converged'].run.tolist()
  evidence = (f'{check.text()}. {hessian.text()}; minimum effect {protocol.MIN_EFFECT["C5"]:g}. '
              f'{branches or "no phase-2 runs"}.' + (
                  f' Unconverged phase-2 runs (no Tr(H) at convergence): '
                  f'{", ".join(unconverged)}.' if unconverged else ''))
  return ClaimResult('C5', STATEMENTS['C5'], verdict, [check, hessian], evidence, table)


def check_all(study: Study) -> List[ClaimResult]:
  """C0-C5; C0 gates the accuracy parts of C2 and C3."""
  gate = check_c0(study)
  return [gate] + [check(study, gate) for check in (check_c1, check_c2, check_c3, check_c4,
                                                    check_c5)]


# ----------------------------------------------------------------------------- sensitivity


def sensitivity(study: Study) -> pd.DataFrame:
  """The Tr(F_i)-dependent effects under every definition: numbers only, no verdict.

  Returns:
    Long table: definition, quantity, estimate, low, high, confidence, n (the accuracies of C3
    are those of the primary analysis).
  """
  rows = []
  accuracy = {name: accuracies(study, arms)[0] for name, arms in AXES}
  for definition in DEFINITIONS:
    effects = [(f'C1 Tr(F_i) {SMALL} / {STAR}', paired_effect(
        study, SMALL, STAR, definition.key, ratio=True, confidence=_alpha_confidence()))]
    effects += [(f'C2 Tr(F_i) {arm} / {SMALL}', paired_effect(
        study, arm, SMALL, definition.key, ratio=True,
        confidence=_alpha_confidence(len(FP_ARMS)))) for arm in FP_ARMS]
    effects += [(f'C3 rho, {name}', stats.correlation_effect(axis_correlation(
        study, arms, definition.key, accuracy[name], confidence=_alpha_confidence(len(AXES)))))
                for name, arms in AXES]
    effects.append((f'C5 phase-1 Tr(F_i) {PHASE1_FP} / {PHASE1_NONE}', paired_effect(
        study, PHASE1_FP, PHASE1_NONE, definition.key, ratio=True,
        confidence=_alpha_confidence())))
    for quantity, e in effects:
      rows.append({'definition': definition.text + (' (primary)' if definition is PRIMARY
                                                    else ''),
                   'quantity': quantity, 'estimate': e.estimate, 'low': e.low, 'high': e.high,
                   'confidence': e.confidence, 'n': e.n[0]})
  return pd.DataFrame(rows)


def sensitivity_wide(long: pd.DataFrame) -> pd.DataFrame:
  """`sensitivity` as one row per definition, one cell 'estimate [low, high] (level, n)' per
  quantity."""
  if not len(long):
    return pd.DataFrame()
  cell = lambda r: (f'{_number(r.estimate)} [{_number(r.low)}, {_number(r.high)}] '  # noqa: E731
                    f'({r.confidence:.0%}, n = {r.n})')
  long = long.assign(cell=[cell(r) for r in long.itertuples()])
  order = list(dict.fromkeys(long.definition))
  wide = long.pivot(index='definition', columns='quantity', values='cell')
  return wide.loc[order, list(dict.fromkeys(long.quantity))].reset_index()


# ----------------------------------------------------------------------------- LeNet arm


def lenet_table(study: Study) -> pd.DataFrame:
  """The descriptive LeNet-5 arms, per run: Tr(F) at step 0, the max over the window and their
  ratio (did Tr(F) rise above its initial value?)."""
  rows = study.table[study.table.arm.isin(LENET_ARMS)]
  return pd.DataFrame({
      'run': rows.run, 'arm': rows.arm, 'seed': rows.seed, 'status': rows.status,
      'trf_init': rows.trf_init, 'trf_window_max': rows.trf_max,
      'max_over_init': [_window(study.runs[name], reduce='max', relative_to_init=True)
                        for name in rows.run]}).reset_index(drop=True)


# ----------------------------------------------------------------------------- figures


def _color(arm: str, index: int) -> str:
  """eta* and eta_s have the colours of the tuned and small learning rate in every figure."""
  named = {STAR: 'tuned_lr', SMALL: 'small_lr', LENET_ARMS[0]: 'tuned_lr',
           LENET_ARMS[1]: 'small_lr'}
  return plots.color_of(named.get(arm, arm), index + 2)


def plot_early_fisher(study: Study, arms: Sequence[str], out_dir: str, name: str,
                      title: str) -> pd.DataFrame:
  """Tr(F) over epochs 0..EARLY_PLOT_EPOCHS, one line per arm (mean over its non-diverged
  seeds, thin lines: seeds), step 0 marked, the primary window shaded."""
  long = []
  for row in study.table[study.table.arm.isin(list(arms)) & ~study.table.diverged].itertuples():
    run = study.runs[row.run]
    if not run.has(FISHER):
      continue
    series = run.series(FISHER)
    series = series[series.epoch <= EARLY_PLOT_EPOCHS + 1e-9]
    long.append(series.assign(arm=row.arm, seed=row.seed, run=row.run))
  if not long:
    return plots.save_figure(plots.empty_figure(f'{name}: no Tr(F) of {", ".join(arms)}'),
                             pd.DataFrame(), out_dir, name)
  long = pd.concat(long, ignore_index=True)
  long['epoch'] = long.epoch.round(6)
  curves = stats.mean_std(long, ['arm', 'epoch'], ['value']).rename(
      columns={'value_mean': 'mean', 'value_std': 'std'})
  fig = Figure(figsize=(7, 4.2))
  ax = fig.add_subplot(1, 1, 1)
  ax.axvspan(*protocol.WINDOW, color='0.9', lw=0, label=f'primary window epochs {_W}')
  for i, arm in enumerate(a for a in arms if a in set(curves.arm)):
    color = _color(arm, i)
    for _, one in long[long.arm == arm].groupby('run'):
      ax.plot(one.epoch, one.value, color=color, lw=0.5, alpha=0.3)
    c = curves[curves.arm == arm].sort_values('epoch')
    ax.plot(c.epoch, c['mean'], color=color, lw=1.6, label=f'{arm} (n = {int(c.n.max())})')
    at_init = c[c.epoch == 0]
    ax.scatter(at_init.epoch, at_init['mean'], marker='*', s=120, color=color, zorder=3,
               edgecolor='k', lw=0.5)
  ax.scatter([], [], marker='*', s=120, color='w', edgecolor='k', label='step 0 (initialization)')
  if (curves['mean'] > 0).all():
    ax.set_yscale('log')
    plots.plain_log_ticks(ax, 'y')
  ax.set_xlabel('epoch')
  ax.set_ylabel('Tr(F)' + (' (log scale)' if ax.get_yscale() == 'log' else ''))
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  return plots.save_figure(fig, curves, out_dir, name)


def plot_trf_vs_accuracy(study: Study, out_dir: str) -> pd.DataFrame:
  """Tr(F_i) against the test accuracy of the C3 comparison, one panel per axis."""
  fig = Figure(figsize=(10, 4.2))
  axes = fig.subplots(1, len(AXES))
  frames = []
  for ax, (name, arms) in zip(axes, AXES):
    acc, level = accuracies(study, arms)
    rows = study.usable(arms)
    frame = pd.DataFrame({'axis': name, 'arm': rows.arm, 'seed': rows.seed, 'run': rows.run,
                          'trf': rows.trf, 'accuracy': rows.run.map(acc).astype(float),
                          'compared_at_fit': level})
    frames.append(frame)
    for i, arm in enumerate(arms):
      f = frame[frame.arm == arm]
      ax.scatter(f.trf, f.accuracy, s=22, color=_color(arm, i), label=f'{arm} (n = {len(f)})')
    rho = axis_correlation(study, arms, PRIMARY.key, acc,
                           confidence=_alpha_confidence(len(AXES)))
    if len(frame) and (frame.trf > 0).all():
      ax.set_xscale('log')
      plots.plain_log_ticks(ax, 'x')
    ax.set_xlabel(f'Tr(F_i) ({PRIMARY.text})', fontsize=8)
    ax.set_ylabel('converged test accuracy' if level is None else
                  f'test accuracy at train accuracy {level:.4g}', fontsize=8)
    ax.set_title(f'{name}: Spearman rho = {_number(rho.r, 2)} '
                 f'[{rho.confidence:.0%} CI {_number(rho.low, 2)}, {_number(rho.high, 2)}]',
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return plots.save_figure(fig, pd.concat(frames, ignore_index=True), out_dir,
                           'trf_vs_accuracy')


def plot_c4_fitting(study: Study, out_dir: str) -> pd.DataFrame:
  """C4's clean and noisy fitting curves (`train_clean/accuracy`, `train_noisy/accuracy`), one
  line per noisy-label arm."""
  arms = (NOISY_NONE, NOISY_FP, NOISY_HALF_LR)
  runs = [study.runs[name] for name in study.table[study.table.arm.isin(arms)].run]
  one_panel_row = [dataclasses.replace(r, config={**r.config, 'experiment': {
      **r.config.get('experiment', {}), 'group': ''}}) for r in runs]
  return plots.plot_curves(one_panel_row, out_dir, 'c4_fitting',
                           ['train_clean/accuracy', 'train_noisy/accuracy'], variants=arms,
                           suptitle=f'label noise {protocol.LABEL_NOISE:.0%}: fitting of the '
                           'clean and the noisy examples')


def plot_c5_hessian(study: Study, out_dir: str) -> pd.DataFrame:
  """Phase 2's Tr(H) at convergence per branch: every run with its standard error, the runs of
  one seed joined, and the mean over seeds."""
  arms = (PHASE2_NONE, PHASE2_FP)
  rows = study.usable(arms)[['run', 'arm', 'seed', 'hessian', 'hessian_se',
                             'converged_test']].reset_index(drop=True)
  if not len(rows):
    return plots.save_figure(plots.empty_figure('c5_hessian: no phase-2 runs'), rows, out_dir,
                             'c5_hessian')
  fig = Figure(figsize=(5, 4))
  ax = fig.add_subplot(1, 1, 1)
  x = {arm: i for i, arm in enumerate(arms)}
  for _, pair in rows.groupby('seed'):
    pair = pair.sort_values('arm', key=lambda s: s.map(x))
    ax.plot(pair.arm.map(x), pair.hessian, color='0.6', lw=0.8)
  for i, arm in enumerate(arms):
    g = rows[rows.arm == arm]
    ax.errorbar(np.full(len(g), i, float), g.hessian, yerr=g.hessian_se, fmt='o', ms=5,
                capsize=2, color=_color(arm, i), label=f'{arm} (n = {len(g)})')
    if len(g):
      ax.errorbar(i + 0.15, g.hessian.mean(), yerr=g.hessian.std(ddof=1) if len(g) > 1
                  else None, fmt='D', ms=7, capsize=3, color=_color(arm, i))
  ax.set_xticks(range(len(arms)), list(arms))
  ax.set_xlim(-0.5, len(arms) - 0.5)
  ax.set_ylabel('Tr(H) at convergence (mean over epochs E..E+extra)', fontsize=8)
  ax.set_title('phase 2: runs (± standard error), seeds joined; diamond: mean ± std', fontsize=8)
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=7)
  fig.tight_layout()
  return plots.save_figure(fig, rows, out_dir, 'c5_hessian')


# ----------------------------------------------------------------------------- report


# Split sizes of the datasets the study may use (fisher_jax/data/fashion_mnist.py): the
# validation set is carved from the training split before the training subset is drawn.
_DATASETS = {'fashion_mnist': ('Fashion-MNIST', 60_000, 10_000)}


def _model_text(model: Dict[str, Any]) -> str:
  if model.get('name') == 'mlp':
    activation = {'relu': 'ReLU'}.get(model.get('activation'), model.get('activation'))
    return (f"MLP with {model.get('depth')} hidden layers of {model.get('width')} "
            + (f'{activation} ' if activation else '') + 'units')
  extra = ', '.join(f'{k} {v}' for k, v in model.items() if k != 'name')
  return {'lenet5': 'LeNet-5'}.get(model.get('name'), str(model.get('name'))) + (
      f' ({extra})' if extra else '')


def _reference_config(study: Study) -> Dict[str, Any]:
  """The config of an eta* run (else of any fit-target run, else the protocol's eta* config)."""
  for arms in ((STAR,), LR_ARMS + BATCH_ARMS + FP_ARMS):
    names = study.table[study.table.arm.isin(arms)].run
    if len(names):
      return study.runs[names.iloc[0]].config
  return protocol.get_config(STAR).to_dict()


def header_lines(study: Study) -> List[str]:
  """The report's first lines: data, model, optimizer and batch, eta* / eta_s, the fit rule."""
  config = _reference_config(study)
  get = lambda *keys: _get(config, *keys)  # noqa: E731
  dataset = get('dataset', 'name')
  title, num_train, num_test = _DATASETS.get(dataset, (dataset, None, None))
  subset = get('dataset', 'train_subset')
  val_fraction = float(get('dataset', 'val_fraction') or 0.0)
  if num_train:
    sizes = (f'validation {round(val_fraction * num_train):,} examples ({val_fraction:.0%} of '
             f'the {num_train:,} training images, held out before the subset is drawn), test '
             f'{num_test:,} (the official test split)')
  else:
    sizes = f'validation {val_fraction:.0%} of the training split, test: its test split'
  data = (f'**Data**: {title}, a fixed {subset:,}-example training subset; {sizes}.' if subset
          else f'**Data**: {title}, the whole training split; {sizes}.')
  data += (f' The noisy-label arms (C4) replace {protocol.LABEL_NOISE:.0%} of the training '
           'labels by another class (fixed per seed).')
  lenet = study.table[study.table.arm.isin(LENET_ARMS)].run
  model = f'**Model**: {_model_text(get("model") or {})}'
  if len(lenet):
    model += (f'; the descriptive arms {", ".join(LENET_ARMS)}: '
              f'{_model_text(study.runs[lenet.iloc[0]].config.get("model", {}))}')
  optimizer = get('optimizer') or {}
  opt_name = {'sgd': 'plain SGD'}.get(optimizer.get('name'), optimizer.get('name'))
  if optimizer.get('name') == 'momentum':
    opt_name += f" {optimizer.get('momentum')}"
  fit, extra = protocol.FIT_TARGET, protocol.FIT_EXTRA_EPOCHS
  return [
      '# Confirmatory study (protocol v2): report', '', data + '  ', model + '.  ',
      f'**Optimizer**: {opt_name}, {optimizer.get("schedule", "constant")} learning rate, '
      f'weight decay {optimizer.get("weight_decay", 0.0):g}, batch {get("batch_size")} (the '
      f'batch-size arms {", ".join(BATCH_ARMS[1:])}: '
      f'{", ".join(str(b) for b in protocol.BATCH_AXIS[1:])}); '
      f'eta* = {protocol.ETA_STAR:g}, eta_s = {protocol.ETA_S:g}.  ',
      f'**Fit rule**: a fit-target run converges at the first epoch E whose accuracy on the '
      f'whole training subset (evaluation mode, `{TRAIN_FULL}`) reaches {fit:g}; it trains '
      f'{extra} more epochs, evaluated every epoch, and its converged test accuracy is the mean '
      f'over epochs E..E+{extra}. A run that reaches its epoch cap first is unconverged.', '']


def _get(config: Dict[str, Any], *keys):
  node = config
  for key in keys:
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return node


def timing_line(path: Optional[str]) -> str:
  """The study's compute, from a timing JSON ({"wall_s", "cpu_s", "max_rss_mb", "runs",
  "command"}), or a sentence saying it was not recorded.

  Raises:
    ValueError: the file lacks one of those fields.
  """
  if not path:
    return 'Timing was not recorded.'
  with open(path) as f:
    t = json.load(f)
  missing = [k for k in ('wall_s', 'cpu_s', 'max_rss_mb', 'runs', 'command') if k not in t]
  if missing:
    raise ValueError(f'--timing {path} lacks {missing}; write wall_s, cpu_s, max_rss_mb, runs '
                     'and command.')
  hours = lambda seconds: f'{float(seconds) / 3600:.2f} h'  # noqa: E731
  line = (f'Compute: {t["runs"]} runs in {hours(t["wall_s"])} wall-clock, {hours(t["cpu_s"])} '
          f'of CPU time, peak memory {float(t["max_rss_mb"]):,.0f} MB (`{t["command"]}`).')
  for key in ('machine', 'date', 'environment'):  # optional context
    if key in t:
      line += f' {key.capitalize()}: {t[key]}.'
  return line


def claims_table(results: Sequence[ClaimResult]) -> pd.DataFrame:
  """One row per test of every claim: claim (its verdict on its first row), test, effect,
  interval with its level, n, minimum effect, the test's verdict."""
  rows = []
  for result in results:
    for i, c in enumerate(result.comparisons):
      e = c.effect
      rows.append({
          'claim': result.key if i == 0 else '',
          'claim verdict': f'**{result.verdict}**' if i == 0 else '',
          'test': c.label + (f' ({c.note})' if c.note else ''),
          'effect': _number(e.estimate) if e else 'undefined',
          'interval': (f'[{_number(e.low)}, {_number(e.high)}] ({e.confidence:.0%})'
                       if e is not None and np.isfinite(e.low) else 'none'),
          'n': f'{e.n[0]} {c.unit}' if e else '0',
          'minimum effect': ('' if c.minimum is None else
                             f'{">=" if c.direction == "greater" else "<="} {c.minimum:.3g}'),
          'test verdict': c.verdict})
  return pd.DataFrame(rows)


def runs_table(study: Study) -> pd.DataFrame:
  """Every run: arm, seed, convergence epoch (or why none), final train_full accuracy,
  converged test accuracy, the primary Tr(F_i), diverged."""
  t = study.table
  def convergence(row) -> str:
    if row.status == 'converged':
      return f'{int(row.convergence_epoch)}'
    return {'fixed budget': 'fixed budget (no fit target)'}.get(row.status, row.status)
  return pd.DataFrame({
      'run': t.run, 'arm': t.arm, 'seed': t.seed,
      'convergence epoch': [convergence(r) for r in t.itertuples()],
      'final train_full acc': t.final_train_full, 'converged test acc': t.converged_test,
      'Tr(F_i)': t.trf, 'diverged': np.where(t.diverged, 'yes', 'no')})


def write_report(root: str, out: str, command: Optional[str] = None,
                 timing: Optional[str] = None) -> str:
  """Writes report.md, its CSVs and PNG figures for the confirmatory runs under `root`.

  Args:
    root: the study's --root (the runs are in ROOT/confirmatory/).
    out: the output directory.
    command: the command line, printed in the report.
    timing: a JSON file of the study's compute ({"wall_s", "cpu_s", "max_rss_mb", "runs",
      "command"}); None: the report says timing was not recorded.

  Returns:
    The path of report.md.
  """
  os.makedirs(out, exist_ok=True)
  study = load_study(root)
  results = check_all(study)
  lines = header_lines(study)
  lines += [(f'Produced by `{command}` from ' if command else 'From ')
            + f'{len(study.table)} runs (config.json and metrics.jsonl only). '
            + timing_line(timing), '']
  lines += [
      '## Claims', '',
      f'Tests are one-sided at alpha = {protocol.ALPHA:g} per claim, read off two-sided '
      f'intervals of level 1 - 2 alpha / k (k tests in the claim; Bonferroni). Seeds pair the '
      f'arms (paired ratio of Tr(F_i), Tr(H): the geometric mean of the per-seed ratios; paired '
      f'differences of accuracies). "held": the interval excludes no effect on the claimed side '
      f'and the estimate reaches the minimum effect; "opposite": it excludes no effect on the '
      f'other side; "no data": fewer than 2 usable pairs, or an arm made ineligible by a '
      f'diverged run. Tr(F_i): {PRIMARY.text} (never step 0).', '']
  table = claims_table(results)
  table.to_csv(os.path.join(out, 'claims.csv'), index=False)
  lines += [report.markdown_table(table), '']
  for r in results:
    lines += [f'**{r.key}** ({r.statement}): **{r.verdict}**. {r.evidence}', '']
    if len(r.table):
      r.table.to_csv(os.path.join(out, f'claim_{r.key}.csv'), index=False)
  long = sensitivity(study)
  long.to_csv(os.path.join(out, 'sensitivity.csv'), index=False)
  lines += ['## Sensitivity to the definition of Tr(F_i)', '',
            'Each cell: estimate [interval] (level, n), with the primary analysis\'s levels and '
            'accuracies; numbers only (the primary row is the one the claims read).', '',
            report.markdown_table(sensitivity_wide(long)), '']
  every = runs_table(study)
  study.table.to_csv(os.path.join(out, 'runs.csv'), index=False)
  diverged = study.table[study.table.diverged].run.tolist()
  unconverged = study.table[study.table.status == 'unconverged'].run.tolist()
  incomplete = study.table[study.table.status == 'incomplete'].run.tolist()
  no_trf = study.table[~study.table.arm.isin(LENET_ARMS) & study.table.trf.isna()
                       & ~study.table.status.isin(_UNUSABLE)].run.tolist()
  lines += ['## Every run', '',
            f'Diverged ({len(diverged)}): {", ".join(diverged) or "none"}. Unconverged '
            f'({len(unconverged)}): {", ".join(unconverged) or "none"}. Incomplete (used by no '
            f'claim; {len(incomplete)}): {", ".join(incomplete) or "none"}. Without a primary '
            f'Tr(F_i) (the run ended before epoch {protocol.WINDOW[1]:g}; {len(no_trf)}): '
            f'{", ".join(no_trf) or "none"}. All numbers per run: [runs.csv](runs.csv).', '',
            report.markdown_table(every), '']
  lines += ['## Figures', '']
  plot_early_fisher(study, LR_ARMS, out, 'fisher_early',
                    'Tr(F) over the first epochs per learning rate (batch 128)')
  plot_trf_vs_accuracy(study, out)
  plot_c4_fitting(study, out)
  plot_c5_hessian(study, out)
  plot_early_fisher(study, LENET_ARMS, out, 'lenet_fisher', 'LeNet-5: Tr(F) over the first '
                    'epochs')
  for name, caption in (
      ('fisher_early', f'Tr(F) over epochs 0-{EARLY_PLOT_EPOCHS:g} per learning-rate arm: mean '
       'over seeds (thin: seeds); star: step 0, the shared initialization; shaded: the primary '
       'window'),
      ('trf_vs_accuracy', 'Tr(F_i) against the test accuracy of C3, per axis (every run)'),
      ('c4_fitting', 'C4: accuracy on the fixed clean and noisy training examples per epoch, '
       'per noisy-label arm'),
      ('c5_hessian', 'C5: Tr(H) at convergence of the phase-2 runs per branch'),
      ('lenet_fisher', 'LeNet-5 (descriptive): Tr(F) over epochs 0-'
       f'{EARLY_PLOT_EPOCHS:g}; star: step 0')):
    lines += [f'![{name}]({name}.png)', '', f'{caption}. Numbers: [{name}.csv]({name}.csv).',
              '']
  lenet = lenet_table(study)
  lenet.to_csv(os.path.join(out, 'lenet.csv'), index=False)
  lines += ['## LeNet-5 (descriptive, no test)', '',
            f'Does Tr(F) rise above its step-0 value? Max Tr(F) over epochs {_W} / Tr(F) at '
            'step 0, per run: ' + ('; '.join(
                f'{arm}: ' + ', '.join(f'{_number(v)} (seed {s})' for v, s in
                                       zip(g.max_over_init, g.seed))
                for arm, g in lenet.groupby('arm')) or 'no LeNet-5 runs') + '.', '']
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  return path
