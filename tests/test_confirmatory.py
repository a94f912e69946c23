"""The confirmatory study's analysis (experiments/confirmatory.py) on small synthetic run
directories: the primary Tr(F_i) never reads step 0; arms are paired by seed; a diverged run
makes its arm ineligible; sensitivity rows carry numbers only; comparisons below convergence say
so and use the highest common fit; the minimum effect; and the report command."""

import json
import math
import os
import random
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from configs import confirmatory as protocol
from experiments import confirmatory
from experiments import report
from fisher_jax import analysis
from fisher_jax.analysis import stats
from fisher_jax.training import guard

SEEDS = protocol.SEEDS[:3]
STEPS = 10  # steps per epoch of the synthetic runs
VERDICT_WORDS = re.compile(r'\bheld\b|\bopposite\b|not held')


def _config(arm, seed, *, lr=0.15, batch=128, target=protocol.FIT_TARGET, num_epochs=12,
            label_noise=0.0, model=None, strength=0.0):
  return {
      'seed': seed, 'batch_size': batch, 'num_epochs': num_epochs, 'eval_every_epochs': 1,
      'dataset': {'name': 'fashion_mnist', 'train_subset': protocol.TRAIN_SUBSET,
                  'val_fraction': 0.1, 'label_noise': label_noise},
      'model': model or {'name': 'mlp', 'depth': 2, 'width': 512, 'activation': 'relu'},
      'optimizer': {'name': 'sgd', 'learning_rate': lr, 'schedule': 'constant',
                    'weight_decay': 0.0},
      'regularizer': {'name': 'fp' if strength else 'none', 'strength': strength,
                      'every_k': 10},
      'stop': {'train_accuracy': target, 'extra_epochs': protocol.FIT_EXTRA_EPOCHS},
      'experiment': {'name': 'confirmatory', 'group': arm, 'variant': arm}}


def _records(trf, *, train_full=None, test=None, init=1.0, hessian=None, clean=None,
             noisy=None, in_epoch=None):
  """Step 0 (Tr(F) = init, clean/noisy accuracy 0.1), then epochs e = 1..len(trf) at steps
  10 e: Tr(F) trf[e-1] and the other per-epoch lists (None entries: not logged); `in_epoch`
  adds a Tr(F) record at the middle of every epoch."""
  out = [{'step': 0, 'epoch': 0.0, 'curvature/fisher_trace': init}]
  if clean is not None:
    out[0].update({'train_clean/accuracy': 0.1, 'train_noisy/accuracy': 0.1})
  for e in range(1, len(trf) + 1):
    if in_epoch is not None:
      out.append({'step': STEPS * e - STEPS // 2, 'epoch': e - 0.5,
                  'curvature/fisher_trace': in_epoch})
    record = {'step': STEPS * e, 'epoch': float(e), 'curvature/fisher_trace': trf[e - 1],
              'train/loss': 0.5, 'train/accuracy': 0.8}
    for key, values in (('train_full/accuracy', train_full), ('test/accuracy', test),
                        ('val/accuracy', test), ('curvature/hessian_trace', hessian),
                        ('train_clean/accuracy', clean), ('train_noisy/accuracy', noisy)):
      if values is not None and values[e - 1] is not None:
        record[key] = values[e - 1]
    if hessian is not None and hessian[e - 1] is not None:
      record['curvature/hessian_trace_stderr'] = 0.1 * hessian[e - 1]
    out.append(record)
  return out


def _write(root, arm, seed, records, **config):
  path = os.path.join(str(root), 'confirmatory', f'{arm}_s{seed}')
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(_config(arm, seed, **config), f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')
  return path


def _converged(trf, test, *, at=8, **kwargs):
  """A run that reaches the fit target at epoch `at` and ends 2 epochs later: Tr(F) `trf` (a
  number) at every epoch, test accuracy `test` at every epoch."""
  epochs = at + protocol.FIT_EXTRA_EPOCHS
  fit = [round(0.5 + 0.45 * e / at, 4) if e < at else 0.995 for e in range(1, epochs + 1)]
  return _records([trf] * epochs, train_full=fit, test=[test] * epochs, **kwargs)


def _fit_arm(root, arm, trfs, tests, **config):
  for seed, trf, test in zip(SEEDS, trfs, tests):
    _write(root, arm, seed, _converged(trf, test), **config)


def test_step_zero_is_never_the_primary_tr_f_even_when_it_is_the_largest(tmp_path):
  trf = [5.0 + e for e in range(20)]
  fit = [0.5, 0.7, 0.85, 0.9, 0.95, 0.97, 0.98] + [0.995] * 13
  records = _records(trf, train_full=fit, test=[0.8] * 20, init=1000.0, in_epoch=2.0)
  records[0]['train_full/accuracy'] = 0.9  # even a fit logged at step 0 is not read
  run = analysis.load_run(_write(tmp_path, 'lr_0.015', 500, records, lr=0.015, target=0.0,
                                 num_epochs=20))
  row = confirmatory.summarize(run)
  inside = [6.0, 7.0, 8.0, 9.0, 10.0, 11.0] + [2.0] * 6  # epochs (1, 7]: ends and mid-epochs
  assert row['trf'] == pytest.approx(np.mean(inside))
  assert row['trf_max'] == 11.0
  assert row['trf_at_fit'] == 7.0  # epoch 3, the first epoch end with train_full >= 0.8
  assert row['trf_init'] == 1000.0 and row['trf_over_init'] == pytest.approx(
      np.mean(inside) / 1000.0)
  assert row['trf_steps'] == pytest.approx(np.mean([2.0] * 15 + trf[5:20]))  # steps (50, 200]
  for key in ('trf', 'trf_max', 'trf_at_fit', 'trf_steps'):
    assert row[key] < 1000.0, key
  assert analysis.early_fisher(run) == 1000.0  # v1's definition reads step 0; v2's never


def _c1_arms(root, small, star):
  _fit_arm(root, 'lr_0.015', small, [0.80] * 3, lr=0.015)
  _fit_arm(root, 'lr_0.15', star, [0.85] * 3)


def test_arms_are_paired_by_seed_whatever_the_run_order(tmp_path):
  # Seeds move both arms together (x1, x4, x16); within a seed the ratio is about 2.
  star = [10.0, 40.0, 160.0]
  small = [21.0, 78.0, 330.0]
  _c1_arms(tmp_path, small, star)
  runs = analysis.load_runs(str(tmp_path))
  result = confirmatory.check_c1(confirmatory.make_study(runs))
  shuffled = list(runs)
  random.Random(3).shuffle(shuffled)
  again = confirmatory.check_c1(confirmatory.make_study(shuffled))
  effect = result.comparisons[0].effect
  assert again.comparisons[0].effect == effect
  log_ratios = np.log(small) - np.log(star)
  assert effect.estimate == pytest.approx(math.exp(log_ratios.mean()))
  interval = scipy_stats.ttest_1samp(log_ratios, 0.0).confidence_interval(0.98)
  assert (effect.low, effect.high) == pytest.approx((math.exp(interval.low),
                                                     math.exp(interval.high)))
  assert effect.confidence == pytest.approx(0.98) and effect.n == (3,)
  assert result.verdict == 'held'
  # A seed of one arm only has no pair: it changes nothing (pairs are matched by seed, not
  # by position).
  _write(tmp_path, 'lr_0.15', 499, _converged(1000.0, 0.85))
  alone = confirmatory.check_c1(confirmatory.load_study(str(tmp_path))).comparisons[0].effect
  assert alone == effect
  # The same numbers unpaired: the seeds' spread swamps the effect.
  unpaired = stats.ratio(small, star, confidence=0.98)
  assert unpaired.estimate == pytest.approx(effect.estimate)
  assert unpaired.low < 1 < unpaired.high
  assert effect.low > protocol.MIN_EFFECT['C1']


def test_a_diverged_run_makes_its_arm_ineligible(tmp_path):
  _c1_arms(tmp_path, [21.0, 22.0, 20.0], [10.0, 10.5, 9.8])
  broken = _write(tmp_path, 'lr_0.15', 503, _records([10.0, 50.0, 900.0],
                                                      train_full=[0.5, 0.3, 0.1]))
  guard.write_divergence(broken, guard.diverged(30, 'train/loss', float('nan'), 0.15))
  study = confirmatory.load_study(str(tmp_path))
  c1 = confirmatory.check_c1(study)
  assert c1.verdict == ('no data (arm ineligible: lr_0.15: confirmatory/lr_0.15_s503 '
                        'diverged)')
  assert c1.comparisons[0].effect.n == (3,)  # the numbers of the other seeds are still shown
  c0 = confirmatory.check_c0(study)
  assert c0.verdict.startswith('no data (arm ineligible: lr_0.15')
  c3 = confirmatory.check_c3(study)
  assert all(c.verdict.startswith('no data (arm ineligible') for c in c3.comparisons)
  table = confirmatory.runs_table(study).set_index('run')
  assert table.loc['confirmatory/lr_0.15_s503', 'diverged'] == 'yes'
  assert table.loc['confirmatory/lr_0.15_s503', 'convergence epoch'] == 'diverged'


def test_an_unconverged_claim_is_compared_at_the_highest_common_fit(tmp_path):
  star_fit = [0.6, 0.7, 0.8, 0.9, 0.93, 0.96, 0.98, 0.995, 0.996, 0.997]
  for seed in SEEDS:
    _write(tmp_path, 'lr_0.15', seed, _records(
        [10.0] * 10, train_full=star_fit, test=[round(0.80 + 0.01 * e, 4) for e in range(1, 11)]))
  for seed, best in zip(SEEDS, (0.95, 0.96, 0.97)):  # the budget cap (12 epochs) comes first
    _write(tmp_path, 'lr_0.015', seed, _records(
        [20.0] * 12, train_full=[round(best - 0.01 * (12 - e), 4) for e in range(1, 13)],
        test=[round(0.70 + 0.01 * e, 4) for e in range(1, 13)]), lr=0.015)
  study = confirmatory.load_study(str(tmp_path))
  assert set(study.table.status) == {'converged', 'unconverged'}
  values, level = confirmatory.accuracies(study, ('lr_0.15', 'lr_0.015'))
  assert level == 0.95  # the highest fit every run reached
  c0 = confirmatory.check_c0(study)
  test = c0.comparisons[0]
  assert test.note == 'compared below convergence at train accuracy 0.95'
  assert 'compared below convergence at train accuracy 0.95' in c0.evidence
  # eta*: epoch 6 (train_full 0.96), test 0.86; eta_s: epochs 12, 11, 10.
  assert test.effect.estimate == pytest.approx(np.mean([0.86 - 0.82, 0.86 - 0.81, 0.86 - 0.80]))
  # With evaluations every 5 epochs, the first one at or after the fit is read.
  sparse = _records([1.0] * 10, train_full=[0.9] * 6 + [0.96] * 4,
                    test=[None, None, None, None, 0.5, None, None, None, None, 0.7])
  assert analysis.value_at_fit(sparse, 0.95) == 0.7
  # Converged arms are compared at convergence: mean test accuracy over epochs E..E+2.
  assert study.table.set_index('run').loc['confirmatory/lr_0.15_s500', 'converged_test'] == (
      pytest.approx(np.mean([0.88, 0.89, 0.90])))


def test_an_effect_below_the_minimum_is_not_held(tmp_path):
  star = [10.0, 40.0, 160.0]
  _c1_arms(tmp_path, [1.2 * v * (1 + 0.001 * i) for i, v in enumerate(star)], star)
  c1 = confirmatory.check_c1(confirmatory.load_study(str(tmp_path)))
  effect = c1.comparisons[0].effect
  assert effect.low > 1 and effect.estimate < protocol.MIN_EFFECT['C1']
  assert effect.verdict('greater') == 'held'  # without the minimum effect it would be
  assert c1.verdict == 'not held'
  above = stats.Effect('paired ratio', 1.6, 1.2, 2.0, 1.0, (5,), 0.98)
  assert above.verdict('greater', 1.5) == 'held'
  assert above.verdict('less', 1 / 1.5) == 'opposite'
  assert stats.Effect('paired ratio', 0.8, 0.7, 0.9, 1.0, (5,), 0.98).verdict(
      'less', 1 / 1.5) == 'not held'
  assert stats.one_sided_confidence(0.01) == pytest.approx(0.98)
  assert stats.one_sided_confidence(0.01, 2) == pytest.approx(0.99)


def test_without_a_generalization_gap_the_accuracy_parts_are_not_tested(tmp_path):
  _c1_arms(tmp_path, [40.0, 41.0, 42.0], [10.0, 10.5, 11.0])  # C0: 0.85 vs 0.80 ...
  for path in (tmp_path / 'confirmatory').glob('lr_0.15_*/metrics.jsonl'):
    path.write_text(path.read_text().replace('"test/accuracy": 0.85', '"test/accuracy": 0.801'))
  for strength in protocol.FP_STRENGTHS:  # ... made nearly equal: below the minimum effect
    _fit_arm(tmp_path, f'fp_{strength:g}', [10.0, 10.2, 10.1], [0.83, 0.84, 0.835], lr=0.015,
             strength=strength)
  c0, _, c2, c3, _, _ = confirmatory.check_all(confirmatory.load_study(str(tmp_path)))
  assert c0.verdict == 'not held' and c0.comparisons[0].effect.estimate == pytest.approx(0.001)
  assert c2.verdict.startswith(confirmatory.NO_GAP + ' (Tr(F_i) part: fp_0.01 held')
  accuracy = [c for c in c2.comparisons if c.label.startswith('test accuracy')]
  assert [c.verdict for c in accuracy] == [confirmatory.NO_GAP] * 2
  assert all(c.effect.estimate > 0.02 for c in accuracy)  # the numbers are still shown
  assert c3.verdict == confirmatory.NO_GAP and np.isfinite(c3.comparisons[0].effect.estimate)


def test_the_spearman_interval_resamples_seeds_not_runs():
  x = np.array([1.0, 2.0, 3.0, 4.0, 1.5, 2.5, 3.5, 4.5, 0.5, 1.0, 2.0, 2.5])
  y = -x + np.array([0.1, -0.2, 0.3, 0.0, 0.2, 0.1, -0.1, 0.0, 0.0, 0.3, -0.2, 0.1])
  seeds = np.repeat([500, 501, 502], 4)
  by_seed = stats.correlation(x, y, 'spearman', clusters=seeds, n_resamples=500)
  by_run = stats.correlation(x, y, 'spearman', n_resamples=500)
  assert by_seed.r == by_run.r == pytest.approx(scipy_stats.spearmanr(x, y)[0])
  assert (by_seed.low, by_seed.high) != (by_run.low, by_run.high)
  one_seed = stats.correlation(x[:4], y[:4], 'spearman', clusters=seeds[:4])
  assert math.isnan(one_seed.low)  # one seed: no interval
  # A resample is the points repeated as often as their seed was drawn: brute-force twin.
  x[5] = x[0]  # a tie
  weights = np.random.default_rng(0).integers(0, 3, size=(20, 12)).astype(float)
  weights[0] = 0.0
  weights[0, :2] = 1.0  # two points only, of different x
  fast = {m: stats._weighted_coefficient(x, y, weights, m) for m in ('spearman', 'pearson')}
  for w, spearman, pearson in zip(weights.astype(int), fast['spearman'], fast['pearson']):
    xs, ys = np.repeat(x, w), np.repeat(y, w)
    assert spearman == pytest.approx(scipy_stats.spearmanr(xs, ys)[0])
    assert pearson == pytest.approx(scipy_stats.pearsonr(xs, ys)[0])
  one_point = np.zeros((1, 12))
  one_point[0, 3] = 4.0  # every copy of one point: undefined
  assert math.isnan(stats._weighted_coefficient(x, y, one_point, 'spearman')[0])


# ----------------------------------------------------------------------------- the report


def _make_root(root):
  """Every arm, 3 seeds (LeNet 2): C1 holds, C0 holds, FP lowers Tr(F_i) and raises accuracy."""
  lr_trf = {'lr_0.015': 40.0, 'lr_0.03': 30.0, 'lr_0.06': 20.0, 'lr_0.15': 10.0}
  lr_acc = {'lr_0.015': 0.80, 'lr_0.03': 0.82, 'lr_0.06': 0.84, 'lr_0.15': 0.86}
  for arm, trf in lr_trf.items():
    _fit_arm(root, arm, [trf * (1 + 0.02 * i) for i in range(3)],
             [lr_acc[arm] + 0.002 * i for i in range(3)], lr=float(arm.split('_')[1]))
  for batch, trf, acc in ((256, 14.0, 0.85), (512, 18.0, 0.84)):
    _fit_arm(root, f'bs_{batch}', [trf * (1 + 0.02 * i) for i in range(3)],
             [acc + 0.002 * i for i in range(3)], batch=batch)
  for strength in protocol.FP_STRENGTHS:
    _fit_arm(root, f'fp_{strength:g}', [15.0 * (1 + 0.01 * i) for i in range(3)],
             [0.83 + 0.001 * i for i in range(3)], lr=0.015, strength=strength)
  for i, seed in enumerate(SEEDS):
    for arm, clean, noisy in (('noisy_none', 0.9, 0.6), ('noisy_fp', 0.85, 0.3),
                              ('noisy_half_lr', 0.84 - 0.01 * i, 0.5)):
      _write(root, arm, seed, _records([5.0] * 6, clean=[clean] * 6, noisy=[noisy] * 6,
                                       in_epoch=5.0), target=0.0, num_epochs=6,
             label_noise=protocol.LABEL_NOISE, strength=0.01 if arm == 'noisy_fp' else 0.0)
    for arm, trf in (('phase1_fp', 8.0), ('phase1_none', 30.0)):
      _write(root, arm, seed, _records([trf * (1 + 0.01 * i)] * 10), target=0.0, num_epochs=10,
             lr=0.015)
    for arm, h in (('phase2_fp', 50.0), ('phase2_none', 80.0)):
      hessian = [None] * 7 + [h * (1 + 0.01 * i)] * 3
      _write(root, arm, seed, _converged(5.0, 0.85, hessian=hessian), lr=0.015)
  for seed in SEEDS[:2]:
    for arm, lr, trf in (('lenet_lr_0.15', 0.15, 2.0), ('lenet_lr_0.015', 0.015, 9.0)):
      _write(root, arm, seed, _records([trf] * 10, init=3.0), target=0.0, num_epochs=10,
             lr=lr, model={'name': 'lenet5'})


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  _make_root(root)
  out = tmp_path_factory.mktemp('report')
  timing = root / 'timing.json'
  timing.write_text(json.dumps({'wall_s': 7200, 'cpu_s': 14000, 'max_rss_mb': 900,
                                'runs': 54, 'command': 'python -m experiments.run x'}))
  assert report.main(['--study', 'confirmatory', '--root', str(root), '--out', str(out),
                      '--timing', str(timing)]) == 0
  return root, out


def test_the_report_states_the_data_first_and_decides_every_claim(written):
  root, out = written
  text = (out / 'report.md').read_text()
  head = text.split('\n')[:4]
  assert 'Fashion-MNIST' in '\n'.join(head) and '3,000-example training subset' in head[2]
  assert 'validation 6,000' in head[2] and 'test 10,000' in head[2]
  assert 'MLP with 2 hidden layers of 512 ReLU units' in text and 'LeNet-5' in text
  assert 'eta* = 0.15, eta_s = 0.015' in text and 'Fit rule' in text
  assert 'Compute: 54 runs in 2.00 h wall-clock' in text
  verdicts = dict(re.findall(r'^\| (C\d) \| \*\*([^*]+)\*\* \|', text, flags=re.M))
  assert verdicts == {'C0': 'held', 'C1': 'held', 'C2': 'held', 'C3': 'held', 'C4': 'held',
                      'C5': 'held'}, verdicts
  for name in ('fisher_early', 'trf_vs_accuracy', 'c4_fitting', 'c5_hessian', 'lenet_fisher'):
    assert os.path.getsize(out / f'{name}.png') > 1000, name
    assert os.path.exists(out / f'{name}.csv'), name
  assert 'control matched' in text
  assert 'lenet_lr_0.015: 3 (seed 500), 3 (seed 501)' in text  # max 9 over step 0's 3
  runs = (out / 'runs.csv').read_text().splitlines()
  assert len(runs) == 1 + 17 * 3 - 2  # every run once (LeNet: 2 seeds)
  untimed = root / 'untimed'
  report.main(['--study', 'confirmatory', '--root', str(root), '--out', str(untimed)])
  assert 'Timing was not recorded.' in (untimed / 'report.md').read_text()


def test_sensitivity_rows_carry_numbers_and_no_verdict(written):
  root, out = written
  text = (out / 'report.md').read_text()
  section = text.split('## Sensitivity')[1].split('## Every run')[0]
  rows = [line for line in section.splitlines() if line.startswith('| ')]
  assert len(rows) == 1 + len(confirmatory.DEFINITIONS)
  for row in rows:
    assert not VERDICT_WORDS.search(row), row
  assert re.search(r'\d \[\d', rows[1])  # estimate [interval]
  table = confirmatory.sensitivity(confirmatory.load_study(str(root)))
  assert not VERDICT_WORDS.search(table.to_csv())
  primary = table[table.definition.str.endswith('(primary)')].set_index('quantity')
  c1 = confirmatory.check_c1(confirmatory.load_study(str(root))).comparisons[0].effect
  assert primary.loc['C1 Tr(F_i) lr_0.015 / lr_0.15', 'estimate'] == pytest.approx(c1.estimate)
