"""Argument checks shared by every public entry point.

Each helper raises a `ValueError` that names the argument, says what was expected
and shows what came, so a bad call fails at the boundary with a readable message
instead of deep inside a matmul.
"""

import numbers
import re
from typing import Any, Optional, Sequence


def check_rank(
  name: str, x: Any, ranks: Sequence[int], layout: str = ''
) -> None:
  """Raises unless `x.ndim` is one of `ranks`."""
  if x.ndim not in tuple(ranks):
    expected = ' or '.join(str(r) for r in ranks)
    hint = f' {layout}' if layout else ''
    raise ValueError(
      f'{name}: expected an array of rank {expected}{hint}, '
      f'got shape {tuple(x.shape)} (rank {x.ndim}).'
    )


def check_shape(name: str, x: Any, expected: Sequence[Optional[int]]) -> None:
  """Raises unless `x.shape` matches `expected` (None matches any size)."""
  shape = tuple(x.shape)
  ok = len(shape) == len(expected) and all(
    e is None or e == s for e, s in zip(expected, shape)
  )
  if not ok:
    pretty = tuple('*' if e is None else e for e in expected)
    raise ValueError(f'{name}: expected shape {pretty}, got {shape}.')


def check_positive(name: str, value: Any, allow_none: bool = False) -> None:
  """Raises unless `value` is a positive integer (or None, if allowed)."""
  if value is None and allow_none:
    return
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Integral)
    or value <= 0
  ):
    raise ValueError(f'{name}: expected a positive integer, got {value!r}.')


def check_positive_number(name: str, value: Any) -> None:
  """Raises unless `value` is a real number above 0 (not a bool)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not value > 0
  ):
    raise ValueError(f'{name}: expected a positive number, got {value!r}.')


def check_divisible(
  name: str, value: int, divisor_name: str, divisor: int
) -> None:
  """Raises unless `divisor` divides `value`."""
  if value % divisor:
    raise ValueError(
      f'{name}={value} must be divisible by {divisor_name}={divisor}.'
    )


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises unless `value` is one of `choices`."""
  if value not in tuple(choices):
    raise ValueError(f'{name}: expected one of {list(choices)}, got {value!r}.')


def check_probability(name: str, value: Any) -> None:
  """Raises unless 0 <= value < 1."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not 0.0 <= value < 1.0
  ):
    raise ValueError(f'{name}: expected a rate in [0, 1), got {value!r}.')


def check_regexes(name: str, value: Any) -> None:
  """Raises unless `value` is a tuple or list of valid regular expressions."""
  if isinstance(value, str) or not isinstance(value, (tuple, list)):
    raise ValueError(
      f'{name}: expected a tuple of regular expressions, got {value!r}.'
    )
  for pattern in value:
    try:
      re.compile(pattern)
    except (TypeError, re.error) as e:
      raise ValueError(
        f'{name}: expected regular expressions, got {pattern!r} ({e}).'
      ) from e
