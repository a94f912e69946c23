"""Benchmark: the same trials with FisherExplosionPruner, with MedianPruner, and without pruning.

  python -m benchmarks.pruning --root runs/bench_pruning [--trials 8] [--epochs 4]

Protocol (fixed before its results were seen):

* the CPU study's recipe (`--config`, default configs/recipes.py:cpu: the Fashion-MNIST MLP,
  plain SGD) on a fixed training subset of `--train_subset` examples (5,000: half the study's,
  to fit the three arms in about 12 minutes on a shared 2-core machine) for `--epochs` epochs, over the
  `lr_batch` space of configs/spaces.py (learning rate log-uniform in [1e-3, 1], batch size
  32, 64, 128 or 256), evaluated every epoch (`eval_every_epochs=1`: both pruners judge every
  epoch; the study's recipe evaluates every 4);
* `--trials` trials per arm from Optuna's RandomSampler with seed `--seed`: its proposals do not
  depend on the results, so the three arms run the same trials in the same order;
* arms `none`, `median` (MedianPruner on validation accuracy) and `fisher`
  (FisherExplosionPruner, factor 2 on the best half's early Tr(F)), both with a warm-up of
  `--warmup_epochs` epochs and `--min_trials` complete trials before pruning;
* one `experiments.tune` process per arm, one after another, single-threaded XLA (one core),
  each arm in its own root with its own (cold) compilation cache.

Reported per arm: trials complete and pruned, epochs trained in all (the resource a pruner
saves), the arm's wall time, the best validation accuracy found (best COMPLETE trial) and that
trial's test accuracy at its best-validation epoch; then, per trial, its parameters and what
each arm did with it. The table goes to stdout and ROOT/pruning.md, the numbers to
ROOT/pruning.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import run as runner  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import tune  # pylint: disable=g-import-not-at-top,wrong-import-position

ARMS = ('none', 'median', 'fisher')


def arm_command(arm: str, args: argparse.Namespace) -> List[str]:
  return [sys.executable, '-m', 'experiments.tune', '--config', args.config, '--space',
          'lr_batch', '--study', f'pruning_{arm}', '--root', os.path.join(args.root, arm),
          '--trials', str(args.trials), '--pruner', arm, '--sampler', 'random', '--seed',
          str(args.seed), '--warmup_epochs', str(args.warmup_epochs), '--min_trials',
          str(args.min_trials), f'--config.num_epochs={args.epochs}',
          f'--config.dataset.train_subset={args.train_subset}', '--config.eval_every_epochs=1',
          *args.overrides]


def load_study(root: str, arm: str):
  import optuna  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, arm, tune.JOURNAL_FILE)
  return optuna.load_study(study_name=f'pruning_{arm}', storage=tune.make_storage(path))


def _fmt(value, spec='.4f'):
  return '-' if value is None else format(value, spec)


def table(results: Dict[str, Dict[str, Any]]) -> str:
  """The per-arm table, in markdown."""
  base = results.get('none', {}).get('epochs')
  lines = ['| pruner | complete / pruned | epochs trained | vs none | wall time (s) | '
           'best val accuracy | its test accuracy |', '|---|---|---|---|---|---|---|']
  for arm, r in results.items():
    best = r.get('best', {})
    ratio = f"{r['epochs'] / base:.2f}" if base else '-'
    lines.append(f"| {arm} | {r['trials'].get('COMPLETE', 0)} / {r['trials'].get('PRUNED', 0)} "
                 f"| {r['epochs']:g} | {ratio} | {r['wall_s']:.0f} | "
                 f"{_fmt(best.get('val_accuracy'))} | {_fmt(best.get('test_accuracy'))} |")
  return '\n'.join(lines)


def trials_table(studies) -> str:
  """One row per trial: its parameters, and per arm its best val accuracy or pruning epoch."""
  arms = list(studies)
  lines = ['| trial | learning rate | batch | ' + ' | '.join(arms) + ' |',
           '|---|---|---|' + '---|' * len(arms)]
  by_arm = {arm: {t.number: t for t in study.trials} for arm, study in studies.items()}
  for number, trial in sorted(by_arm[arms[0]].items()):
    cells = []
    for arm in arms:
      t = by_arm[arm].get(number)
      if t is None:
        cells.append('-')
      elif t.state.name == 'PRUNED':
        kind = 'diverged' if t.user_attrs.get('diverged') else 'pruned'
        cells.append(f"{kind} at epoch {t.user_attrs.get('epochs', 0):g}")
      else:
        cells.append(f"{t.state.name.lower()} {_fmt(t.user_attrs.get('val_accuracy'))}")
    lines.append(f"| {number} | {trial.params['optimizer.learning_rate']:.4g} | "
                 f"{trial.params['batch_size']} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.pruning',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--root', required=True, help='arms go to ROOT/<arm>/')
  parser.add_argument('--config', default='configs/recipes.py:cpu')
  parser.add_argument('--trials', type=int, default=8)
  parser.add_argument('--epochs', type=int, default=4)
  parser.add_argument('--train_subset', type=int, default=5000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--warmup_epochs', type=int, default=1)
  parser.add_argument('--min_trials', type=int, default=3)
  parser.add_argument('--arms', default=','.join(ARMS), help='comma-separated subset of arms')
  parser.add_argument('overrides', nargs='*', help='more --config.FIELD=VALUE for every trial '
                      '(after --)')
  args = parser.parse_args(argv)
  args.root = os.path.abspath(args.root)
  arms = args.arms.split(',')
  # One core: single-threaded XLA and TensorFlow ops (the setting of a run in a full pool).
  env = runner.run_environment(args.root, workers=os.cpu_count() or 1)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # Each arm its own cache (tune's default).
  results = {}
  for arm in arms:
    command = arm_command(arm, args)
    print('$ ' + ' '.join(command[1:]), flush=True)
    start = time.monotonic()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    wall = time.monotonic() - start
    results[arm] = {**tune.summarize(load_study(args.root, arm)), 'wall_s': round(wall, 1)}
  studies = {arm: load_study(args.root, arm) for arm in arms}
  text = (table(results) + '\n\nPer trial (complete: best validation accuracy; pruned: the '
          'epochs it ran):\n\n' + trials_table(studies) + '\n')
  print(text)
  with open(os.path.join(args.root, 'pruning.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(args.root, 'pruning.json'), 'w') as f:
    json.dump({'command': sys.argv, 'results': results}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
