"""Sweep definitions: the runs of each experiment, at full scale and at CPU scale.

`get_sweep(name).runs(scale)` lists the runs of experiment `name` for `scale` ('cpu' or 'full').
A run is a config file with its argument, command-line overrides and a directory name; the
runner (`experiments.run`) turns it into

  python -m fisher_jax.main --config configs/<file>.py:<arg> --workdir ROOT/<sweep>/<run> \
      --config.<key>=<value> ...

A run may name runs of the same sweep that must finish first (`after`, for runs that start from
another run's checkpoint); '{sweep_dir}' in an override value is replaced by ROOT/<sweep>.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Sequence, Tuple

from configs import confirmatory
from configs import recipes

SCALES = ('cpu', 'full')
_CPU = recipes.RECIPES[recipes.CPU]
TUNED = _CPU.tuned_lr  # eta* of the CPU protocol (docs/experiments.md)
SMALL = _CPU.small_lr  # eta*/30
CPU_SEEDS = 3  # every setting a claim uses


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep.

  Attributes:
    name: directory name under ROOT/<sweep>/ (unique in the sweep).
    config: 'configs/<file>.py:<arg>', relative to the repository root.
    overrides: (dotted config key, value) pairs passed as --config.<key>=<value>.
    after: names of runs of the same sweep that must finish (exit 0) before this one starts.
  """
  name: str
  config: str
  overrides: Tuple[Tuple[str, Any], ...] = ()
  after: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sweep:
  """An experiment's sweep.

  Attributes:
    name: the sweep's name (also its directory under ROOT and the runs' experiment.name).
    number: the experiment's number in the study (1-10).
    config_file: its config file, relative to the repository root.
    description: one line.
    expand: scale -> the runs.
    study: 'exploratory' (the ten experiments; what the runner's 'all' runs) or
      'confirmatory' (protocol v2, run by name).
  """
  name: str
  number: int
  config_file: str
  description: str
  expand: Callable[[str], List[Run]]
  study: str = 'exploratory'

  def runs(self, scale: str) -> List[Run]:
    """The runs at `scale` ('cpu' or 'full'), checked for unique names and known `after`s."""
    if scale not in SCALES:
      raise ValueError(f'scale={scale!r} is unknown; choose one of {list(SCALES)}.')
    runs = self.expand(scale)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
      raise ValueError(f'sweep {self.name!r} has duplicate run names.')
    for run in runs:
      missing = set(run.after) - set(names)
      if missing:
        raise ValueError(f'run {run.name!r} of sweep {self.name!r} waits for unknown runs '
                         f'{sorted(missing)}.')
    return runs


def _fmt(value: float) -> str:
  """A number for directory names and labels: 0.00316 -> '0.00316', 1e-05 -> '1e-05'."""
  return f'{value:g}'


def _seeds(scale: str, cpu: int, full: int) -> range:
  return range(cpu if scale == 'cpu' else full)


def _budget(lr: float) -> Tuple[Tuple[str, Any], ...]:
  """The CPU protocol's epochs and evaluation cadence for a run at `lr` (as overrides)."""
  epochs, every = recipes.budget(recipes.CPU, lr)
  return (('num_epochs', epochs), ('eval_every_epochs', every))


def _setting_runs(config_file: str, settings: Sequence[str], variants: Sequence[str],
                  seeds: range) -> List[Run]:
  """Runs `<setting>_<variant>_s<seed>` of `config_file:<setting>,<variant>` (setting omitted
  from the name when there is one)."""
  runs = []
  for setting in settings:
    prefix = f'{setting}_' if len(settings) > 1 else ''
    for variant in variants:
      for seed in seeds:
        runs.append(Run(f'{prefix}{variant}_s{seed}', f'{config_file}:{setting},{variant}',
                        (('seed', seed),)))
  return runs


def _settings(scale: str, full: Sequence[str]) -> Tuple[str, ...]:
  return ('cpu',) if scale == 'cpu' else tuple(full)


def _fisher_explosion(scale: str) -> List[Run]:
  runs = _setting_runs('configs/fisher_explosion.py', _settings(scale, ['wrn_tiny_imagenet']),
                       ['tuned_lr', 'small_lr'], _seeds(scale, CPU_SEEDS, 1))
  if scale == 'cpu':  # The momentum variant, one seed each.
    runs += _setting_runs('configs/fisher_explosion.py', ['cpu'],
                          ['tuned_lr_momentum', 'small_lr_momentum'], range(1))
  return runs


# Learning-rate and batch-size grids of experiment 2 (values ours; tuned lr in the middle).
_EARLY_LR = {
    'resnet50_imagenet': (0.01, 0.0316, 0.1, 0.316),
    'simple_cnn_cifar10': (0.001, 0.00316, 0.01, 0.0316, 0.1),
    'wrn_cifar100': (0.001, 0.00316, 0.01, 0.0316, 0.1),
    # With fisher_explosion's SMALL and TUNED runs: the protocol's 4-point lr axis.
    'cpu': (TUNED / 5, TUNED / 2),  # 3 x TUNED: lr 1.0 diverged in the pilot
}
_EARLY_BATCH = {
    'simple_cnn_cifar10': (32, 128, 512, 2048),
    'wrn_cifar100': (32, 128, 512, 2048),
}


def _early_fisher(scale: str) -> List[Run]:
  runs = []
  seeds = _seeds(scale, CPU_SEEDS, 3)
  for setting in _settings(scale, ['resnet50_imagenet', 'simple_cnn_cifar10', 'wrn_cifar100']):
    prefix = '' if scale == 'cpu' else f'{setting}_'
    for lr in _EARLY_LR[setting]:
      budget = _budget(lr) if scale == 'cpu' else ()
      for seed in seeds:
        runs.append(Run(f'{prefix}lr_{_fmt(lr)}_s{seed}', f'configs/early_fisher.py:{setting},lr',
                        (('optimizer.learning_rate', lr), ('seed', seed),
                         ('experiment.variant', f'lr={_fmt(lr)}')) + budget))
    for batch_size in _EARLY_BATCH.get(setting, ()):
      for seed in seeds:
        runs.append(Run(f'{prefix}bs_{batch_size}_s{seed}',
                        f'configs/early_fisher.py:{setting},batch_size',
                        (('batch_size', batch_size), ('seed', seed),
                         ('experiment.variant', f'B={batch_size}'))))
  return runs


# FP strengths of experiment 3 on CPU, the grid its strength is chosen from on validation.
_CPU_FP_GRID = (0.03, 0.1, 0.3)  # 1 diverged in the first epoch (protocol amendment)


def _regularizers(scale: str) -> List[Run]:
  if scale == 'cpu':  # The baselines are fisher_explosion's tuned_lr and small_lr runs.
    runs = []
    for strength in _CPU_FP_GRID:
      for seed in range(CPU_SEEDS):
        runs.append(Run(f'fp_{_fmt(strength)}_s{seed}', 'configs/regularizers.py:cpu,fp',
                        (('regularizer.strength', strength), ('seed', seed))))
    # GP, GPr, GPx: one seed each, at the recipe's strength (descriptive, not a claim).
    return runs + _setting_runs('configs/regularizers.py', ['cpu'], ['gpx', 'gp', 'gpr'],
                                range(1))
  settings = _settings(scale, ['wrn_tiny_imagenet', 'densenet_cifar100', 'vgg11_cifar100',
                               'wrn_cifar100', 'simple_cnn_cifar10'])
  return _setting_runs('configs/regularizers.py', settings,
                       ['tuned_lr', 'small_lr', 'gpx', 'gp', 'fp', 'gpr'], _seeds(scale, 1, 2))


def _fp_start(scale: str) -> List[Run]:
  setting = 'cpu' if scale == 'cpu' else 'wrn_cifar100'
  epochs = (10, 40) if scale == 'cpu' else (0, 2, 5, 10, 20, 50, 100)  # CPU e=0: regularizers' run
  # On CPU the baselines are fisher_explosion's runs.
  runs = [] if scale == 'cpu' else _setting_runs('configs/fp_start.py', [setting],
                                                 ['tuned_lr', 'small_lr'], _seeds(scale, 1, 2))
  for epoch in epochs:
    for seed in _seeds(scale, 1, 2):
      runs.append(Run(f'fp_from_{epoch}_s{seed}', f'configs/fp_start.py:{setting},fp',
                      (('regularizer.start_epoch', epoch), ('seed', seed),
                       ('experiment.variant', f'fp_from_{epoch}'))))
  return runs


# FP strengths of experiment 5 (CPU: 3 seeds each, the C4 pairs; chosen on validation).
_FP_STRENGTHS = {'cpu': (0.03, 0.1), 'full': (0.01, 0.1, 1.0, 10.0)}


def _memorization(scale: str) -> List[Run]:
  runs = []
  settings = _settings(scale, ['vgg11_cifar100', 'resnet50_cifar100'])
  for setting in settings:
    prefix = f'{setting}_' if len(settings) > 1 else ''
    config = f'configs/memorization.py:{setting}'
    for seed in _seeds(scale, CPU_SEEDS, 1):
      runs.append(Run(f'{prefix}none_s{seed}', f'{config},none', (('seed', seed),)))
      for strength in _FP_STRENGTHS[scale]:
        runs.append(Run(f'{prefix}fp_{_fmt(strength)}_s{seed}', f'{config},fp',
                        (('regularizer.strength', strength), ('seed', seed),
                         ('experiment.variant', f'fp={_fmt(strength)}'))))
  return runs


def _flat_minima(scale: str) -> List[Run]:
  setting = 'cpu' if scale == 'cpu' else 'wrn_cifar100'
  config = f'configs/flat_minima.py:{setting}'
  runs = []
  # Every phase-1 run is continued once (same seed): independent phase-1/phase-2 pairs.
  for start in ('fp', 'none'):
    for seed in range(3):
      runs.append(Run(f'phase1_{start}_s{seed}', f'{config},{start}', (('seed', seed),)))
      runs.append(Run(f'phase2_{start}_s{seed}', f'{config},continue',
                      (('init_from.workdir', f'{{sweep_dir}}/phase1_{start}_s{seed}'),
                       ('seed', seed), ('experiment.group', start)),
                      after=(f'phase1_{start}_s{seed}',)))
  return runs


def _axis_runs(config_file: str, setting: str, lrs: Sequence[float], batch_sizes: Sequence[int],
               lr_for_batch: float) -> List[Run]:
  runs = [Run(f'lr_{_fmt(lr)}', f'{config_file}:{setting},lr',
              (('optimizer.learning_rate', lr), ('experiment.variant', f'lr={_fmt(lr)}'))
              + (_budget(lr) if setting == 'cpu' else ()))
          for lr in lrs]
  runs += [Run(f'bs_{b}', f'{config_file}:{setting},batch_size',
               (('batch_size', b), ('optimizer.learning_rate', lr_for_batch),
                ('experiment.variant', f'B={b}'))) for b in batch_sizes]
  return runs


def _hessian_trace(scale: str) -> List[Run]:
  if scale == 'cpu':
    return _axis_runs('configs/hessian_trace.py', 'cpu', (SMALL, TUNED), (), TUNED)
  return _axis_runs('configs/hessian_trace.py', 'simple_cnn_cifar10', (0.001, 0.01, 0.1),
                    (32, 128, 512), 0.0316)


def _curvature_correlations(scale: str) -> List[Run]:
  setting = 'cpu' if scale == 'cpu' else 'simple_cnn_cifar10'
  lrs = (TUNED / 10, TUNED / 3, TUNED) if scale == 'cpu' else (0.001, 0.00316, 0.01, 0.0316, 0.1)
  return [Run(f'lr_{_fmt(lr)}', f'configs/curvature_correlations.py:{setting},lr',
              (('optimizer.learning_rate', lr), ('experiment.variant', f'lr={_fmt(lr)}')))
          for lr in lrs]


def _fp_every_k(scale: str) -> List[Run]:
  variants = ['fp_k10', 'fp_k1', 'fp_exact']  # On CPU the baselines are fisher_explosion's.
  return _setting_runs('configs/fp_every_k.py', _settings(scale, ['simple_cnn_cifar10']),
                       variants if scale == 'cpu' else ['tuned_lr', 'small_lr'] + variants,
                       _seeds(scale, 1, 2))


def _per_step(scale: str) -> List[Run]:
  cpu = scale == 'cpu'
  setting = 'cpu' if cpu else 'simple_cnn_cifar10'
  config = 'configs/per_step.py:' + setting
  lrs = (TUNED, SMALL) if cpu else (0.0316, 0.001)
  small_b, large_b = (32, 512) if cpu else (128, 1024)
  strengths = () if cpu else (0.01, 0.1, 1.0)
  runs = [Run(f'lr_{_fmt(lr)}', f'{config},lr',
              (('optimizer.learning_rate', lr), ('experiment.variant', f'lr={_fmt(lr)}')))
          for lr in lrs]
  runs += [Run(f'bs_{b}', f'{config},batch_size',
               (('batch_size', b), ('experiment.variant', f'B={b}'))) for b in (small_b, large_b)]
  runs += [Run(f'bs_{large_b}_fp_{_fmt(s)}', f'{config},large_batch_fp',
               (('batch_size', large_b), ('regularizer.strength', s),
                ('experiment.variant', f'B={large_b} FP={_fmt(s)}'))) for s in strengths]
  return runs


def _confirmatory(scale: str) -> List[Run]:
  """The confirmatory study (protocol v2): every arm with its seeds; phase 2 starts from the
  phase-1 run of the same seed. CPU scale only."""
  if scale != 'cpu':
    raise ValueError('sweep confirmatory runs at --scale cpu only (its protocol is CPU-sized).')
  runs = []
  # The two-phase arms first (phase 2 waits for phase 1), then the slowest: the runs are
  # started in this order, so the long ones do not end up last.
  order = sorted(confirmatory.ARMS, key=lambda a: (not a.startswith('phase'),
                                                   not a.startswith(('fp_', 'lr_0.015'))))
  for arm in order:
    seeds = confirmatory.LENET_SEEDS if arm.startswith('lenet') else confirmatory.SEEDS
    for seed in seeds:
      name = f'{arm}_s{seed}'
      if arm.startswith('phase2_'):
        start = 'phase1_' + arm[len('phase2_'):] + f'_s{seed}'
        runs.append(Run(name, f'configs/confirmatory.py:{arm}',
                        (('seed', seed), ('init_from.workdir', f'{{sweep_dir}}/{start}')),
                        after=(start,)))
      else:
        runs.append(Run(name, f'configs/confirmatory.py:{arm}', (('seed', seed),)))
  return runs


_SWEEPS = [
    Sweep('fisher_explosion', 1, 'configs/fisher_explosion.py',
          'tuned vs small learning rate: accuracy, Tr(F), gradient norm per epoch',
          _fisher_explosion),
    Sweep('early_fisher', 2, 'configs/early_fisher.py',
          'learning-rate and batch-size sweeps: early Tr(F_i) against best test accuracy',
          _early_fisher),
    Sweep('regularizers', 3, 'configs/regularizers.py',
          'GPx, GP, FP, GPr at a small learning rate vs the tuned/small baselines',
          _regularizers),
    Sweep('fp_start', 4, 'configs/fp_start.py',
          'FP applied from epoch e: final test accuracy against e', _fp_start),
    Sweep('memorization', 5, 'configs/memorization.py',
          'noisy labels: clean vs noisy fitting for FP strengths 1e-2 ... 1e1', _memorization),
    Sweep('flat_minima', 6, 'configs/flat_minima.py',
          'two starts continued with several seeds: Tr(H) and accuracy at the best-test point',
          _flat_minima),
    Sweep('hessian_trace', 7, 'configs/hessian_trace.py',
          'Tr(H) over training for several learning rates and batch sizes', _hessian_trace),
    Sweep('curvature_correlations', 8, 'configs/curvature_correlations.py',
          'Tr(F) against Tr(F_B) and against Tr(H)', _curvature_correlations),
    Sweep('fp_every_k', 9, 'configs/fp_every_k.py',
          'FP recomputed every 10 steps vs every step; the exact per-example FP', _fp_every_k),
    Sweep('per_step', 10, 'configs/per_step.py',
          'per-step Tr(F) and mini-batch accuracy: two lrs, small vs large batch, FP strengths',
          _per_step),
    Sweep('confirmatory', 11, 'configs/confirmatory.py',
          'the confirmatory study (protocol v2): fit-target runs, paired seeds, claims C0-C5',
          _confirmatory, study='confirmatory'),
]
SWEEPS: Dict[str, Sweep] = {s.name: s for s in _SWEEPS}


def get_sweep(name: str) -> Sweep:
  """The sweep called `name` (see `SWEEPS`)."""
  if name not in SWEEPS:
    raise ValueError(f'sweep {name!r} is unknown; choose one of {list(SWEEPS)} or all.')
  return SWEEPS[name]
