"""Timing of the benchmarks: compile and warm up, then interleaved rounds, then medians.

Every benchmark here times its variants the same way: each variant is called once to compile
and warm up, then the variants run in interleaved rounds (each once per round, so a change in
machine load hits all of them alike), and a cost is the median over rounds. A call is
`call(round_index)` (the index lets a variant vary its random key); `finish(result)` waits for
the result (`jax.block_until_ready`, or `torch.cuda.synchronize` for the PyTorch peers), so
the clock measures the work, not its dispatch. Standard library only: the PyTorch peers use it
without importing JAX.
"""

import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Mapping


def log(message: str):
  """Progress to stderr (the tables go to stdout)."""
  print(message, file=sys.stderr, flush=True)


def timed_call(call: Callable[[int], Any], round_index: int,
               finish: Callable[[Any], Any]) -> float:
  """Seconds of one `call(round_index)` until `finish` returns; the result is dropped."""
  start = time.perf_counter()
  finish(call(round_index))
  return time.perf_counter() - start


def warm_up(calls: Mapping[str, Callable[[int], Any]], finish: Callable[[Any], Any],
            log: Callable[[str], None] = log) -> Dict[str, float]:
  """Calls every variant once (compilation and warm-up); returns the seconds each took."""
  seconds = {}
  for name, call in calls.items():
    seconds[name] = timed_call(call, 0, finish)
    log(f'compiled {name.strip()} ({seconds[name]:.1f} s)')
  return seconds


def interleaved_rounds(calls: Mapping[str, Callable[[int], Any]], rounds: int,
                       finish: Callable[[Any], Any],
                       log: Callable[[str], None] = log) -> Dict[str, List[float]]:
  """`rounds` rounds, each calling every variant once in order; the seconds of every call.

  Args:
    calls: name -> `call(round_index)`, already compiled and warmed up.
    rounds: how many rounds (>= 1).
    finish: waits for a call's result.
    log: where progress goes (stderr by default).

  Returns:
    name -> [seconds of round 1, ..., seconds of round `rounds`].
  """
  if rounds < 1:
    raise ValueError(f'rounds={rounds} must be at least 1.')
  times = {name: [] for name in calls}
  for r in range(rounds):
    for name, call in calls.items():
      times[name].append(timed_call(call, r + 1, finish))
    log(f'round {r + 1}/{rounds} done')
  return times


def median(values) -> float:
  """The median of a non-empty sequence of seconds."""
  return statistics.median(values)
