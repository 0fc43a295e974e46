"""Constructor argument checks whose errors name the owner, the argument and what it accepts.

Configs reach the constructors as plain Python values, so a wrong one (0, a negative
number, a float where an int is needed, a typo in a name) is refused where it enters
rather than deep inside the first forward pass.
"""
import math
from numbers import Integral, Real
from typing import Sequence, Tuple


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f'{owner}: {name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def check_number(owner: str, name: str, value, minimum: float, inclusive: bool = True) -> float:
    """``value`` as a float, if it is a finite number >= ``minimum`` (> if not inclusive)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or \
            (value < minimum if inclusive else value <= minimum):
        bound = f'>= {minimum}' if inclusive else f'> {minimum}'
        raise ValueError(f'{owner}: {name} must be a finite number {bound}, got {value!r}')
    return float(value)


def check_choice(owner: str, name: str, value, choices: Sequence):
    """``value``, if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f'{owner}: {name} must be one of {tuple(choices)}, got {value!r}')
    return value


def check_size(owner: str, name: str, value) -> Tuple[int, int]:
    """An (H, W) pair of positive ints from an int or a pair."""
    pair = (value, value) if isinstance(value, Integral) and not isinstance(value, bool) \
        else value
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2 or any(
            isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in pair):
        raise ValueError(f'{owner}: {name} must be a positive int or an (H, W) pair of '
                         f'positive ints, got {value!r}')
    return int(pair[0]), int(pair[1])
