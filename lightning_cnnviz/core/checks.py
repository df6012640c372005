"""The argument checks every monitor and core object shares, written once, each naming the argument, what was
given and what is allowed."""

from __future__ import annotations

from typing import Any

__all__ = ["check_callable", "check_choice", "check_positive_int"]


def check_positive_int(who: str, argument: str, value: Any) -> int:
    """``value`` when it is an int >= 1 (not a bool), else ValueError.

    Example:
        >>> check_positive_int("MyMonitor", "every_n_epochs", 0)
        Traceback (most recent call last):
        ValueError: MyMonitor: `every_n_epochs` must be a positive integer, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: `{argument}` must be a positive integer, got {value!r}.")
    return value


def check_choice(who: str, argument: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """``value`` when it is one of ``allowed``, else ValueError listing them.

    Example:
        >>> check_choice("MyMonitor", "on_error", "ignore", ("warn", "raise"))
        Traceback (most recent call last):
        ValueError: MyMonitor: `on_error` can be {'warn', 'raise'}, got 'ignore'.
    """
    if value not in allowed:
        raise ValueError(f"{who}: `{argument}` can be {{{', '.join(map(repr, allowed))}}}, got {value!r}.")
    return value


def check_callable(who: str, argument: str, value: Any) -> Any:
    """``value`` when it is callable or None, else TypeError.

    Example:
        >>> check_callable("MyMonitor", "batch_to_images", "images")
        Traceback (most recent call last):
        TypeError: MyMonitor: `batch_to_images` must be a callable or None, got 'images'.
    """
    if value is not None and not callable(value):
        raise TypeError(f"{who}: `{argument}` must be a callable or None, got {value!r}.")
    return value
