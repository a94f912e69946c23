"""Reading one config field: present, of the right kind, within its bounds.

Every check ends in a `ValueError` whose one sentence names the field and what it may be. The
whole-config reader (`training.settings`) and the dataset section's reader
(`data.pipeline.read_settings`) both use these, so a missing or impossible field reads the same
wherever it is.
"""

from typing import Mapping


def required(section, field: str, prefix: str):
  """`section[field]` of a config section (a ConfigDict, dict or object); a missing field is an
  error naming it, `prefix + field` (no defaults in code)."""
  try:
    return section[field] if isinstance(section, Mapping) or hasattr(section, 'to_dict') \
        else getattr(section, field)
  except (KeyError, AttributeError, TypeError):
    raise ValueError(f'{prefix}{field} is missing; add it to the config (configs/default.py '
                     'lists every field with its default).') from None


def number(field: str, value, *, low: float, low_ok: bool = True, high: float = None):
  """Returns `value` after checking low <(=) value (< high); `field` names the config field."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and (value >= low if low_ok else value > low) and (high is None or value < high)
  if not ok:
    bound = f'>= {low}' if low_ok else f'> {low}'
    if high is not None:
      bound += f' and < {high}'
    raise ValueError(f'{field}={value!r} is invalid; it must be a number {bound}.')
  return value


def integer(field: str, value, *, low: int, off_ok: bool = False) -> int:
  """Returns `value` after checking it is an int >= `low` (`off_ok`: 0 means off)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    what = 'a non-negative integer (0 turns it off)' if off_ok else f'an integer >= {low}'
    raise ValueError(f'{field}={value!r} is invalid; it must be {what}.')
  return value


def choice(field: str, value, choices) -> str:
  """Returns `value` after checking it is one of `choices`."""
  if value not in choices:
    raise ValueError(f'{field}={value!r} is unknown; choose one of {list(choices)}.')
  return value
