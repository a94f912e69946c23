"""Training to a fit target: when a run has fit its training set, read off its metrics records.

A run with `config.stop.train_accuracy > 0` evaluates its model (evaluation mode) on the whole
training set after every epoch and logs `train_full/accuracy`. Its **convergence epoch** E is the
first epoch whose `train_full/accuracy` reaches the target; the run trains `stop.extra_epochs`
more epochs, evaluating every one of them, and ends at epoch E + extra_epochs. A run that reaches
`num_epochs` first (the budget cap) is unconverged.

This module reads metrics.jsonl records (dicts with 'step', 'epoch' and metric names) only, so
the trainer (on a resume) and the analysis (on finished runs) find the same E.
"""

from typing import Any, Iterable, Mapping, Optional

TRAIN_FULL_ACCURACY = 'train_full/accuracy'
TRAIN_FULL_LOSS = 'train_full/loss'


def convergence_epoch(records: Iterable[Mapping[str, Any]], target: float) -> Optional[int]:
  """The first epoch whose end-of-epoch `train_full/accuracy` is >= `target`, or None.

  Args:
    records: metrics.jsonl records, in any order ('epoch' is step / steps_per_epoch, so an
      epoch's end has an integral epoch).
    target: the fit target, `stop.train_accuracy` (> 0).

  Returns:
    The convergence epoch E (an int >= 1), or None when no record reaches `target`.
  """
  if not target > 0:
    raise ValueError(f'stop.train_accuracy={target} turns the fit target off; a convergence '
                     'epoch needs a target > 0.')
  reached = [r['epoch'] for r in records
             if r.get(TRAIN_FULL_ACCURACY) is not None
             and r[TRAIN_FULL_ACCURACY] == r[TRAIN_FULL_ACCURACY]  # NaN never reaches it.
             and r[TRAIN_FULL_ACCURACY] >= target]
  return int(round(min(reached))) if reached else None


def end_epoch(convergence: Optional[int], extra_epochs: int, num_epochs: int) -> int:
  """The epoch a run ends at: E + extra_epochs once converged (at most `num_epochs`), else the
  budget cap `num_epochs`."""
  if convergence is None:
    return num_epochs
  return min(convergence + extra_epochs, num_epochs)
