"""The one exception type for bad user input.

Library code raises :class:`InputError` (a ``ValueError``) with a one-line message that names the
file or parameter and says what to do, e.g.
``InputError(f"{path}: image 12 of 10 requested; the stack has only 10 images")``.
The CLI (``ackmeans_torch/cli``) turns any ``ValueError``/``OSError`` raised while a command runs
into that one line on stderr and exit code 2; every other exception is a bug and keeps its
traceback.

:func:`check_int` and :func:`check_number` are the checks every options type runs in its
``__post_init__``: they name the parameter and its value (``n_classes=0 must be an integer >= 1``)
and refuse ``bool`` where a number is expected (Python counts ``True`` as 1; a config typo would
pass unseen).
"""

import math


class InputError(ValueError):
    """Bad user input (a file or a parameter); the message is one line and says what to do."""


def check_int(name: str, value, minimum: int) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


def check_number(name: str, value, low: float, high: float = math.inf) -> None:
    """Refuse ``value`` unless it is a finite real number in [low, high]."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise InputError(f"{name}={value!r} must be a number {bounds}")
