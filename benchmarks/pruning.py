"""Replay benchmark of the pruners: one logged search without pruning, replayed under each.

  python -m benchmarks.pruning sweep --root runs/pruning_sweep \
      [--trials 32 --epochs 15 --train_subset 3000 --workers 2 --seed 0]
  python -m benchmarks.pruning replay --root runs/pruning_sweep --orders 20 \
      --out docs/pruning_replay

`sweep` runs ONE search with `experiments.tune --pruner none` (its trial workdirs, journal and
metrics): the `lr_batch` space of configs/spaces.py (learning rate log-uniform in [1e-3, 1] x
batch size in {32, 64, 128, 256}) drawn by Optuna's RandomSampler with seed `--seed`, on the
CPU recipe (configs/recipes.py:cpu: the Fashion-MNIST MLP, plain SGD) with a training subset of
`--train_subset` examples, `--epochs` epochs, evaluation (validation and test) and Tr(F) at
every epoch. The sampled parameters are drawn first, in this process, and queued in the study
(`enqueue_trial`), so the trials are the same whatever the number of `--workers` processes
that run them; they are also written to ROOT/sweep.json.

`replay` reads every logged trial's per-epoch curves (metrics.jsonl of its workdir) and, for
each of `--orders` random trial orders (seeds (seed, k)), replays each pruner EXACTLY: a fresh
in-memory Optuna study with that pruner runs one trial per logged trial, in that order, one at
a time (`study.optimize`, one worker); the objective of the trial in position i reports the
logged curve of trial order[i] epoch by epoch through `tune.report_epochs`, the function a live
search reports with (`pruners.record_metrics` of the curve up to that epoch, then
`trial.report(val/accuracy, epoch)`), asks `trial.should_prune()` after every epoch as a live
trial does, and stops there when the pruner says so. A trial that ran to its end returns the
objective `experiments.tune` returns (`tune.best_epoch`: its best validation accuracy); one that
diverged in the sweep ends PRUNED after its last logged epoch, as it does in a live search. So
the replay decides what a live sequential search over the same trials in that order would
(tests/test_pruners.py runs both and compares), at no training cost.

Per pruner and order: epochs trained (a pruned trial counts the epochs up to its pruning; a
diverged one, the epoch in which it diverged), their share saved against no pruning, the
regret (best objective of all trials without pruning minus the best objective among the
COMPLETE trials of the replay), the share of the top-quartile trials (by objective without
pruning) that were pruned, and the test accuracy (at its best-validation epoch) of the trial
the search selects (the best COMPLETE one). Over the orders: median and range. The tables go
to OUT/replay.md, the rows to OUT/replay.csv, everything to OUT/replay.json. The protocol and
its success criteria are in docs/tuning.md ("Replay benchmark").
"""

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optuna  # pylint: disable=g-import-not-at-top,wrong-import-position
import pandas as pd  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import tune  # pylint: disable=g-import-not-at-top,wrong-import-position
from fisher_jax import analysis  # pylint: disable=g-import-not-at-top,wrong-import-position
from fisher_jax import pruners as pruners_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from fisher_jax import rundir  # pylint: disable=g-import-not-at-top,wrong-import-position

SPACE = 'lr_batch'
STUDY = 'pruning_sweep'
SWEEP_FILE = 'sweep.json'
# The pruners of the protocol (docs/tuning.md), in table order.
PRUNERS = ('none', 'median', 'fisher', 'fisher_or_median', 'successive_halving', 'hyperband')
# Besides tune.PRUNERS: the Fisher rule on the old benchmark's definition of the early Tr(F).
EXTRA_PRUNERS = {'fisher_v1': ('fisher', {'fisher_definition': 'v1'})}
# What a replayed trial keeps of its metrics.jsonl.
KEPT_METRICS = pruners_lib.TRIAL_METRICS + ('test/accuracy',)
# The success criteria (docs/tuning.md), on the medians over the orders.
MIN_SAVED = 0.5
MAX_REGRET = 0.005
MAX_TOP_PRUNED = 0.10


# --- The logged trials. ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoggedTrial:
  """One trial of the logged search, as the replay reads it.

  Attributes:
    number: its trial number in the logged study.
    metrics: its records (`analysis.read_metrics` of its workdir): 'step', 'epoch' and the
      `KEPT_METRICS` columns it logged.
    config: its resolved config (config.json), handed to `pruners.record_metrics`.
    params: its sampled parameters (for the tables).
    diverged: whether it diverged (the divergence guard stopped it: a PRUNED trial in tune).
  """
  number: int
  metrics: pd.DataFrame
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  diverged: bool = False

  @classmethod
  def from_records(cls, number: int, records: Sequence[Mapping[str, Any]], **kwargs
                   ) -> 'LoggedTrial':
    """A trial from metrics.jsonl-like records (dicts with 'step', 'epoch', metrics)."""
    frame = pd.DataFrame.from_records(list(records)).sort_values('step', kind='stable')
    return cls(number=number, metrics=frame.reset_index(drop=True), **kwargs)

  @functools.cached_property
  def epoch_ends(self) -> List[int]:
    """The epochs whose end it logged (integral epochs >= 1): where a live trial reports."""
    epochs = self.metrics['epoch'].to_numpy(float)
    return sorted({int(round(e)) for e in epochs if e >= 1 and abs(e - round(e)) < 1e-9})

  @functools.cached_property
  def _cuts(self) -> Dict[int, pd.DataFrame]:
    return {e: self.metrics[self.metrics['epoch'] <= e + 1e-9].reset_index(drop=True)
            for e in self.epoch_ends}

  def upto(self, epoch: int) -> pd.DataFrame:
    """Its records up to the end of `epoch` (what metrics.jsonl held when it ended)."""
    return self._cuts[epoch]

  @functools.cached_property
  def best(self) -> Dict[str, float]:
    """`tune.best_epoch` of its records: 'val_accuracy' (the objective), 'test_accuracy'."""
    return tune.best_epoch(self.metrics)

  @property
  def value(self) -> float:
    """The objective `experiments.tune` gives it run to its end (NaN: diverged)."""
    return math.nan if self.diverged else self.best.get('val_accuracy', math.nan)

  @property
  def test_accuracy(self) -> float:
    """Its test accuracy at its best-validation epoch."""
    return self.best.get('test_accuracy', math.nan)

  @property
  def epochs(self) -> float:
    """The epochs it trains run to its end: its last logged epoch, plus for a diverged trial
    the epoch in which it diverged (the guard checks the loss at epoch ends, unlogged)."""
    last = float(self.metrics['epoch'].max()) if len(self.metrics) else 0.0
    if not self.diverged:
      return last
    cap = self.config.get('num_epochs')
    return float(min(math.floor(last + 1e-9) + 1, cap if cap else math.inf))


def load_sweep(root: str, study_name: Optional[str] = None
               ) -> Tuple[str, List[LoggedTrial]]:
  """The study name and the trials of the search in ROOT (its journal, trial workdirs).

  Args:
    root: the sweep's root (`experiments.tune --root`).
    study_name: the study in ROOT/study.journal (None: the only one there).

  Returns:
    (the study's name, its finished trials by number).

  Raises:
    ValueError: no study, several and no name, trials still running or queued, a trial pruned
      by a pruner (the sweep must run without one), a trial that did not reach its last epoch.
  """
  journal = os.path.join(root, tune.JOURNAL_FILE)
  if not os.path.exists(journal):
    raise ValueError(f'{journal} does not exist; run `python -m benchmarks.pruning sweep '
                     f'--root {root}` first.')
  storage = tune.make_storage(journal)
  if study_name is None:
    names = [s.study_name for s in storage.get_all_studies()]
    if len(names) != 1:
      raise ValueError(f'{journal} holds studies {names}; name one with --study.')
    study_name = names[0]
  study = optuna.load_study(study_name=study_name, storage=storage)
  unfinished = [t.number for t in study.trials if t.state.name in ('RUNNING', 'WAITING')]
  if unfinished:
    raise ValueError(f'the sweep in {root} has unfinished trials {unfinished}; run the sweep '
                     'command again to finish them.')
  trials = []
  for t in study.trials:
    if t.state.name not in ('COMPLETE', 'PRUNED'):
      continue  # FAIL: retried under a new number, or a surplus trial that ran nothing.
    diverged = bool(t.user_attrs.get('diverged'))
    if t.state.name == 'PRUNED' and not diverged:
      raise ValueError(f'trial {t.number} of {root} was pruned; the replay needs a sweep run '
                       'with --pruner none.')
    workdir = t.user_attrs['workdir']
    if not os.path.isdir(workdir):  # The root was moved: its trial directories moved with it.
      workdir = os.path.join(root, os.path.basename(os.path.normpath(workdir)))
    frame = analysis.read_metrics(workdir)
    with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
      config = json.load(f)
    frame = frame[['step', 'epoch'] + [m for m in KEPT_METRICS if m in frame]]
    trial = LoggedTrial(number=t.number, metrics=frame, config=config, params=dict(t.params),
                        diverged=diverged)
    last = trial.epoch_ends[-1] if trial.epoch_ends else 0
    if not diverged and last < int(config['num_epochs']):
      raise ValueError(f'trial {t.number} ({workdir}) ended before its last epoch '
                       f"{config['num_epochs']}; run the sweep command again to finish it.")
    trials.append(trial)
  if not trials:
    raise ValueError(f'the sweep in {root} has no finished trial.')
  return study_name, trials


# --- The replay. -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a search did with one trial.

  Attributes:
    number: the logged trial's number.
    position: its position in the replayed order (the replay study's trial number).
    state: 'COMPLETE' or 'PRUNED' (by the pruner, or diverged).
    pruned_at: the epoch after which the pruner stopped it; None if it did not.
    epochs: epochs trained.
    value: the objective of a COMPLETE trial (else NaN).
  """
  number: int
  position: int
  state: str
  pruned_at: Optional[int]
  epochs: float
  value: float


def replay_order(trials: Sequence[LoggedTrial], order: Sequence[int],
                 pruner: optuna.pruners.BasePruner, *, study_name: str = STUDY
                 ) -> List[Outcome]:
  """Runs a sequential search over `trials` in `order` with `pruner`, on their logged curves.

  Args:
    trials: the logged trials.
    order: indices into `trials`: the trial of position i is trials[order[i]].
    pruner: a fresh pruner (stateful pruners keep what they saw).
    study_name: the study's name (HyperbandPruner's brackets hash it with the trial number).

  Returns:
    One `Outcome` per position.
  """
  study = optuna.create_study(study_name=study_name, direction='maximize', pruner=pruner,
                              sampler=optuna.samplers.RandomSampler(seed=0))
  pruned_at: Dict[int, int] = {}

  def objective(trial):
    logged = trials[order[trial.number]]
    reported = set()
    for epoch in logged.epoch_ends:
      tune.report_epochs(trial, logged.upto(epoch), dict(logged.config), reported)
      if trial.should_prune():
        pruned_at[trial.number] = epoch
        raise optuna.TrialPruned(f'pruned at epoch {epoch}')
    if logged.diverged:
      raise optuna.TrialPruned('diverged')
    return logged.value

  study.optimize(objective, n_trials=len(order))
  outcomes = []
  for t in study.get_trials(deepcopy=False):
    logged = trials[order[t.number]]
    at = pruned_at.get(t.number)
    outcomes.append(Outcome(
        number=logged.number, position=t.number, state=t.state.name, pruned_at=at,
        epochs=float(at) if at is not None else logged.epochs,
        value=float(t.value) if t.state.name == 'COMPLETE' else math.nan))
  return outcomes


def top_quartile(trials: Sequence[LoggedTrial]) -> List[int]:
  """The numbers of the best quarter of `trials` by objective without pruning (at least one;
  ties with the last one included; diverged trials never)."""
  ranked = sorted((t for t in trials if not math.isnan(t.value)), key=lambda t: -t.value)
  if not ranked:
    return []
  cutoff = ranked[min(len(ranked), math.ceil(len(trials) / 4)) - 1].value
  return [t.number for t in ranked if t.value >= cutoff]


def score(trials: Sequence[LoggedTrial], outcomes: Sequence[Outcome]) -> Dict[str, float]:
  """The numbers of one replayed search (module docstring); NaN regret and test accuracy when
  no trial completed."""
  by_number = {t.number: t for t in trials}
  full_epochs = sum(t.epochs for t in trials)
  best_value = max((t.value for t in trials if not math.isnan(t.value)), default=math.nan)
  complete = [o for o in sorted(outcomes, key=lambda o: o.position) if o.state == 'COMPLETE']
  selected = max(complete, key=lambda o: o.value) if complete else None  # The first best.
  top = top_quartile(trials)
  pruned = {o.number for o in outcomes if o.pruned_at is not None}
  epochs = sum(o.epochs for o in outcomes)
  return {
      'epochs': epochs,
      'saved': 1.0 - epochs / full_epochs if full_epochs else math.nan,
      'regret': best_value - selected.value if selected else math.nan,
      'top_quartile_pruned': len(pruned & set(top)) / len(top) if top else math.nan,
      'test_accuracy': by_number[selected.number].test_accuracy if selected else math.nan,
      'selected': selected.number if selected else -1,
      'complete': len(complete),
      'pruned': len(pruned),
  }


def make_orders(n: int, orders: int, seed: int) -> List[List[int]]:
  """`orders` random permutations of range(n), the k-th drawn with seed (seed, k)."""
  return [np.random.default_rng([seed, k]).permutation(n).tolist() for k in range(orders)]


def pruner_factories(names: Sequence[str], **settings) -> Dict[str, Callable[[], Any]]:
  """{name: () -> a fresh pruner}: `tune.make_pruner(name, **settings)`, or an EXTRA_PRUNERS
  name (its base pruner with its own settings on top)."""
  factories = {}
  for name in names:
    base, extra = EXTRA_PRUNERS.get(name, (name, {}))
    if base not in tune.PRUNERS:
      raise ValueError(f'pruner {name!r} is unknown; choose among '
                       f'{list(tune.PRUNERS) + list(EXTRA_PRUNERS)}.')
    factories[name] = functools.partial(tune.make_pruner, base, **{**settings, **extra})
  return factories


def replay(trials: Sequence[LoggedTrial], pruners: Mapping[str, Callable[[], Any]], *,
           orders: int = 20, seed: int = 0, study_name: str = STUDY) -> Dict[str, Any]:
  """Replays every pruner on `orders` random orders of `trials`.

  Args:
    trials: the logged trials (`load_sweep`, or `LoggedTrial.from_records`).
    pruners: {name: () -> fresh pruner} (`pruner_factories`).
    orders: the number of random orders (`make_orders`).
    seed: their seed.
    study_name: the replay studies' name.

  Returns:
    {'orders': the orders (logged trial numbers), 'rows': one dict per (pruner, order) with
    `score`'s numbers, 'outcomes': {pruner: per order, the `Outcome`s as dicts},
    'summary': {pruner: {number: {'median', 'min', 'max'}}}}.
  """
  permutations = make_orders(len(trials), orders, seed)
  rows, outcomes = [], {}
  for name, factory in pruners.items():
    outcomes[name] = []
    for k, order in enumerate(permutations):
      result = replay_order(trials, order, factory(), study_name=study_name)
      outcomes[name].append([dataclasses.asdict(o) for o in result])
      rows.append({'pruner': name, 'order': k, **score(trials, result)})
  summary = {}
  for name in pruners:
    mine = [r for r in rows if r['pruner'] == name]
    summary[name] = {key: _spread([r[key] for r in mine]) for key in
                     ('epochs', 'saved', 'regret', 'top_quartile_pruned', 'test_accuracy',
                      'complete', 'pruned')}
  return {'orders': [[trials[i].number for i in order] for order in permutations],
          'rows': rows, 'outcomes': outcomes, 'summary': summary}


def _spread(values: Sequence[float]) -> Dict[str, float]:
  finite = [v for v in values if not math.isnan(v)]
  if not finite:
    return {'median': math.nan, 'min': math.nan, 'max': math.nan, 'undefined': len(values)}
  return {'median': float(np.median(finite)), 'min': float(min(finite)),
          'max': float(max(finite)), 'undefined': len(values) - len(finite)}


def criteria(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Dict[str, Any]:
  """The protocol's success criteria (docs/tuning.md) on the medians over the orders.

  Per pruner: 'saves' (median saved >= MIN_SAVED and median regret <= MAX_REGRET) and
  'keeps_top' (median share of top-quartile trials pruned <= MAX_TOP_PRUNED); for the Fisher
  rules, 'beats_median': more epochs saved than MedianPruner at the same or a lower regret
  (medians; None when no 'median' was replayed).
  """
  out = {}
  median = summary.get('median')
  for name, s in summary.items():
    if name == 'none':
      continue
    saved, regret = s['saved']['median'], s['regret']['median']
    verdict = {'saves': bool(saved >= MIN_SAVED and regret <= MAX_REGRET),
               'keeps_top': bool(s['top_quartile_pruned']['median'] <= MAX_TOP_PRUNED)}
    if name.startswith('fisher'):
      verdict['beats_median'] = None if median is None else bool(
          saved > median['saved']['median'] and regret <= median['regret']['median'])
    out[name] = verdict
  return out


# --- Output. ---------------------------------------------------------------------------------


def _cell(spread: Mapping[str, float], spec: str) -> str:
  if math.isnan(spread['median']):
    return '-'
  text = (f"{format(spread['median'], spec)} [{format(spread['min'], spec)}, "
          f"{format(spread['max'], spec)}]")
  return text + (f" ({spread['undefined']} undefined)" if spread.get('undefined') else '')


def summary_table(summary, verdicts) -> str:
  """The per-pruner table (median [min, max] over the orders), in markdown."""
  lines = ['| pruner | epochs trained | saved vs none | regret | top-quartile trials pruned | '
           'test accuracy of the selected trial | complete / pruned trials | criteria |',
           '|---|---|---|---|---|---|---|---|']
  for name, s in summary.items():
    v = verdicts.get(name, {})
    words = [f'{k} {"yes" if ok else "no"}' for k, ok in v.items() if ok is not None]
    lines.append(
        f"| {name} | {_cell(s['epochs'], '.0f')} | {_cell(s['saved'], '.1%')} | "
        f"{_cell(s['regret'], '.4f')} | {_cell(s['top_quartile_pruned'], '.0%')} | "
        f"{_cell(s['test_accuracy'], '.4f')} | {s['complete']['median']:.0f} / "
        f"{s['pruned']['median']:.0f} | {', '.join(words) or '-'} |")
  return '\n'.join(lines)


def trials_table(trials: Sequence[LoggedTrial], result: Mapping[str, Any]) -> str:
  """One row per logged trial: parameters, objective, Tr(F) summaries, and per pruner the
  orders in which it was pruned (and the median epoch)."""
  names = [n for n in result['outcomes'] if n != 'none']
  top = set(top_quartile(trials))
  lines = ['| trial | learning rate | batch | val accuracy (objective) | test accuracy | '
           'early Tr(F), window | early Tr(F), v1 | ' + ' | '.join(names) + ' |',
           '|---|---|---|---|---|---|---|' + '---|' * len(names)]
  for t in sorted(trials, key=lambda t: (math.isnan(t.value), -np.nan_to_num(t.value))):
    run = analysis.Run(name=str(t.number), path='', config=dict(t.config), metrics=t.metrics)
    value = 'diverged' if t.diverged else f'{t.value:.4f}' + (' (top)' if t.number in top
                                                              else '')
    cells = []
    for name in names:
      at = [o['pruned_at'] for order in result['outcomes'][name] for o in order
            if o['number'] == t.number and o['pruned_at'] is not None]
      cells.append(f'{len(at)}/{len(result["outcomes"][name])} at {np.median(at):g}'
                   if at else '-')
    lr = t.params.get('optimizer.learning_rate')
    lines.append(' | '.join([
        f'| {t.number}', '-' if lr is None else f'{lr:.4g}', str(t.params.get('batch_size', '-')),
        value, f'{t.test_accuracy:.4f}', f'{pruners_lib.window_early_fisher(run):.4g}',
        f'{pruners_lib.v1_early_fisher(run):.4g}', *cells]) + ' |')
  return '\n'.join(lines)


def write_outputs(out: str, trials: Sequence[LoggedTrial], result: Mapping[str, Any],
                  settings: Mapping[str, Any]) -> str:
  """Writes OUT/replay.md, replay.csv, replay.json; returns the markdown."""
  os.makedirs(out, exist_ok=True)
  verdicts = criteria(result['summary'])
  text = '\n'.join([
      f"Replay of {len(trials)} logged trials in {len(result['orders'])} random orders "
      f"(seed {settings['seed']}); median [min, max] over the orders.", '',
      summary_table(result['summary'], verdicts), '',
      f'Criteria (medians over the orders): saves = at least {MIN_SAVED:.0%} of the epochs '
      f'saved with regret <= {MAX_REGRET}; keeps_top = at most {MAX_TOP_PRUNED:.0%} of the '
      'top-quartile trials pruned; beats_median = more epochs saved than median at the same '
      'or a lower regret.', '',
      'The logged trials (best objective first; "k/n at e": pruned in k of the n orders, at '
      'median epoch e):', '', trials_table(trials, result), ''])
  with open(os.path.join(out, 'replay.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(out, 'replay.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(result['rows'][0]))
    writer.writeheader()
    writer.writerows(result['rows'])
  with open(os.path.join(out, 'replay.json'), 'w') as f:
    json.dump(_plain({'settings': dict(settings), 'criteria': verdicts, **result,
                      'trials': [{'number': t.number, 'params': dict(t.params),
                                  'value': t.value, 'test_accuracy': t.test_accuracy,
                                  'epochs': t.epochs, 'diverged': t.diverged}
                                 for t in trials]}), f, indent=1, allow_nan=False)
  return text


def _plain(value):
  """`value` with NaN as None (strict JSON)."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


# --- The sweep. ------------------------------------------------------------------------------


def sample_params(trials: int, seed: int, space: str = SPACE) -> List[Dict[str, Any]]:
  """The parameters of `trials` trials of `space` drawn by RandomSampler(seed), in order."""
  from configs import spaces  # pylint: disable=g-import-not-at-top
  suggest = spaces.get_space(space)
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
  params = []
  for _ in range(trials):
    trial = study.ask()
    suggest(trial)
    params.append(dict(trial.params))
    study.tell(trial, 0.0)
  return params


def sweep_command(args: argparse.Namespace, seed: int) -> List[str]:
  """One tune worker of the sweep."""
  return [sys.executable, '-m', 'experiments.tune', '--config', args.config, '--space', SPACE,
          '--study', args.study, '--root', args.root, '--trials', str(args.trials),
          '--pruner', 'none', '--sampler', 'random', '--seed', str(seed),
          f'--config.num_epochs={args.epochs}',
          f'--config.dataset.train_subset={args.train_subset}',
          '--config.eval_every_epochs=1', '--config.measure.every_epochs=1',
          '--config.checkpoint_every_epochs=5', *args.overrides]


def run_sweep(args: argparse.Namespace) -> int:
  from experiments import run as runner  # pylint: disable=g-import-not-at-top
  args.root = os.path.abspath(args.root)
  os.makedirs(args.root, exist_ok=True)
  params = sample_params(args.trials, args.seed)
  study = optuna.create_study(study_name=args.study, direction='maximize', load_if_exists=True,
                              storage=tune.make_storage(os.path.join(args.root,
                                                                     tune.JOURNAL_FILE)))
  for p in params:  # Idempotent: a second start queues nothing twice.
    study.enqueue_trial(p, skip_if_exists=True)
  commands = [sweep_command(args, args.seed + 1 + i) for i in range(args.workers)]
  with open(os.path.join(args.root, SWEEP_FILE), 'w') as f:
    json.dump({'space': SPACE, 'sampler': 'random', 'seed': args.seed, 'trials': args.trials,
               'epochs': args.epochs, 'train_subset': args.train_subset,
               'config': args.config, 'overrides': args.overrides, 'workers': args.workers,
               'commands': [' '.join(c[1:]) for c in commands], 'params': params}, f, indent=1)
  env = runner.run_environment(args.root, workers=args.workers)
  start = time.monotonic()
  for command in commands:
    print('$ ' + ' '.join(command[1:]), flush=True)
  workers = [subprocess.Popen(c, cwd=REPO, env=env) for c in commands]
  codes = [w.wait() for w in workers]
  print(f'sweep: workers exited {codes} after {time.monotonic() - start:.0f} s', flush=True)
  return 0 if all(c == 0 for c in codes) else 1


def run_replay(args: argparse.Namespace) -> int:
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  start = time.monotonic()
  try:
    study_name, trials = load_sweep(os.path.abspath(args.root), args.study)
    epochs = {int(t.config.get('num_epochs', 0)) for t in trials}
    settings = {'warmup_epochs': args.warmup_epochs, 'min_trials': args.min_trials,
                'fisher_factor': args.fisher_factor,
                'fisher_top_fraction': args.fisher_top_fraction,
                'fisher_definition': args.fisher_definition,
                'min_resource': args.min_resource, 'reduction_factor': args.reduction_factor,
                'max_resource': max(epochs)}
    factories = pruner_factories(args.pruners.split(','), **settings)
  except ValueError as error:
    sys.exit(f'benchmarks.pruning replay: {error}')
  result = replay(trials, factories, orders=args.orders, seed=args.seed,
                  study_name=study_name)
  text = write_outputs(args.out, trials, result, {
      'root': args.root, 'orders': args.orders, 'seed': args.seed, 'pruners': list(factories),
      'pruner_settings': settings, 'command': sys.argv})
  print(text)
  print(f'replay: {len(trials)} trials x {args.orders} orders x {len(factories)} pruners in '
        f'{time.monotonic() - start:.0f} s; wrote {args.out}/replay.md, .csv, .json')
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.pruning',
                                   description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  sweep = commands.add_parser('sweep', help='run the logged search without pruning')
  sweep.add_argument('--root', required=True, help='the study: ROOT/study.journal, trial_NNNN/')
  sweep.add_argument('--config', default='configs/recipes.py:cpu')
  sweep.add_argument('--study', default=STUDY)
  sweep.add_argument('--trials', type=int, default=32)
  sweep.add_argument('--epochs', type=int, default=15)
  sweep.add_argument('--train_subset', type=int, default=3000)
  sweep.add_argument('--workers', type=int, default=2, help='tune processes sharing the study')
  sweep.add_argument('--seed', type=int, default=0, help="RandomSampler's seed")
  sweep.add_argument('overrides', nargs='*', help='more --config.FIELD=VALUE for every trial '
                     '(after --)')
  play = commands.add_parser('replay', help='replay the pruners on the logged search')
  play.add_argument('--root', required=True)
  play.add_argument('--study', default=None, help='default: the only study in the journal')
  play.add_argument('--orders', type=int, default=20)
  play.add_argument('--seed', type=int, default=0, help="the orders' seed")
  play.add_argument('--out', required=True, help='directory of replay.md, .csv, .json')
  play.add_argument('--pruners', default=','.join(PRUNERS),
                    help=f'comma-separated, among {list(tune.PRUNERS) + list(EXTRA_PRUNERS)}')
  # The pruners' settings: experiments.tune's flags and defaults.
  play.add_argument('--warmup_epochs', type=int, default=1)
  play.add_argument('--min_trials', type=int, default=3)
  play.add_argument('--fisher_factor', type=float, default=2.0)
  play.add_argument('--fisher_top_fraction', type=float, default=0.5)
  play.add_argument('--fisher_definition', default='window', choices=('window', 'v1'))
  play.add_argument('--min_resource', type=int, default=1)
  play.add_argument('--reduction_factor', type=int, default=3)
  args = parser.parse_args(argv)
  if args.command == 'sweep':
    if args.trials < 1 or args.workers < 1:
      parser.error(f'--trials={args.trials} and --workers={args.workers} must be at least 1.')
    return run_sweep(args)
  if args.orders < 1:
    parser.error(f'--orders={args.orders} must be at least 1.')
  return run_replay(args)


if __name__ == '__main__':
  sys.exit(main())
