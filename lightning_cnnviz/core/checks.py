"""The argument checks every monitor and core object shares, written once, each naming the argument, what was
given and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["check_callable", "check_choice", "check_names", "check_number", "check_positive_int"]


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


def check_number(who: str, argument: str, value: Any, allowed: Callable[[float], bool], what: str) -> float:
    """``value`` as a float when it is a number (not a bool) for which ``allowed`` holds, else ValueError saying
    it must be ``what``.

    Example:
        >>> check_number("MyMonitor", "lr", -1, lambda v: v > 0, "a positive number")
        Traceback (most recent call last):
        ValueError: MyMonitor: `lr` must be a positive number, got -1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed(value):
        raise ValueError(f"{who}: `{argument}` must be {what}, got {value!r}.")
    return float(value)


def check_names(who: str, argument: str, value: Any, what: str = "layer names") -> list[str] | None:
    """``value`` as a list when it is a sequence of strings (not one string), None for None, else TypeError.

    Example:
        >>> check_names("MyMonitor", "layers", "conv1")
        Traceback (most recent call last):
        TypeError: MyMonitor: `layers` must be a list of layer names or None, got 'conv1'.
    """
    if value is not None and (isinstance(value, str) or not all(isinstance(name, str) for name in value)):
        raise TypeError(f"{who}: `{argument}` must be a list of {what} or None, got {value!r}.")
    return None if value is None else list(value)


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
