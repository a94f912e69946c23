"""When things happen: the one "is it time?" check and the one epochs -> steps conversion.

Every cadence of a run -- logging, measurements, evaluation, checkpoints, the penalty's
recomputation (`penalty_due`) -- asks `is_due`, and every length given in epochs (`start_epoch`,
`warmup_epochs`, decay epochs, the run's length) becomes a number of steps through
`epochs_to_steps` (as big_vision's `utils.itstime` and `utils.steps`).
"""


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """The number of steps in `epochs` epochs (a fraction is allowed): round(epochs * S)."""
  return int(round(epochs * steps_per_epoch))


def is_due(step, every: int, *, start: int = 0, last=False):
  """Whether `step` is on the cadence "every `every` from `start`", or is the last one.

  Args:
    step: the count (steps or epochs done); a Python int, or a jax array inside a jitted
      function.
    every: the period; 0 turns the cadence off (then only `last` makes it due).
    start: the first due count; none before it.
    last: True where `step` is the last one and that is due whatever the period (e.g. a final
      evaluation); a bool or a bool array.

  Returns:
    A bool (an array for array arguments): `last`, or `step >= start` and
    `(step - start) % every == 0`.
  """
  if not every:
    return last
  on_cadence = (step >= start) & ((step - start) % every == 0)
  return on_cadence | last


def penalty_due(count: int, *, every_k: int, start_step: int) -> bool:
  """Whether the update after `count` updates computes a fresh penalty (host ints).

  The regularizer's cadence: every `every_k` updates from `start_step` on (`is_due`); the
  training loop asks it before each step and runs the step that computes the penalty, or the
  one that reuses the cached gradient (`regularizers.add_penalty_gradient`). Before
  `start_step` no penalty is handed over, so the transformation adds `strength * 0`.
  """
  return bool(is_due(count, every_k, start=start_step))
