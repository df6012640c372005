"""The suite's time budget: the fraction of training time that all the visualizations of one run may take
together, and when a monitor with ``every_n_epochs="auto"`` may log within it.

Every monitor's log is timed (its own cost); the training time is the run's time outside those logs. A monitor on
"auto" logs at the end of the fit, always, and before it only within the budget, keeping room for that final log:
once it has logged, when its spending plus two logs at the cost of its latest (the next and the final one) stays
within its share (the budget's fraction of the training time so far, less what the monitors on fixed cadences
spent, split among the "auto" monitors by their priorities); before its first log, whose cost nobody knows yet,
when the "auto" monitors' spending and the final logs they owe leave room in that pool. So a short fit pays for
about one log of each monitor, and the first logs of a long one come one after another, cheapest first in effect.
All timing goes through one clock (``time.perf_counter`` unless a test gives another).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lightning_cnnviz.core.checks import check_number, check_positive_int

__all__ = ["Account", "Budget", "Schedule", "check_budget"]

Clock = Callable[[], float]
DEFAULT_FRACTION = {"cpu": 0.05, "cuda": 0.02}  # of training time, by the model's device


@dataclass
class Account:
    """One monitor's spending: seconds of all its logs, their number, the latest's cost, and whether it is on
    "auto" (else on a fixed cadence) with its priority.

    Example:
        >>> budget = Budget(0.05)
        >>> budget.join("A")
        >>> budget.account("A")
        Account(auto=True, priority=1.0, spent=0.0, logs=0, last=0.0)
    """

    auto: bool = True
    priority: float = 1.0
    spent: float = 0.0
    logs: int = 0
    last: float = 0.0


class Budget:
    """The time budget of one run, shared by its monitors.

    Args:
        fraction: of the training time all visualizations may take together, in (0, 1]; None: 0.05 on a CPU and
            0.02 on CUDA (fixed by :meth:`start` from the model's device).
        clock: seconds, monotonic (``time.perf_counter``); tests give a fake one.

    Example:
        >>> now = [0.0]
        >>> budget = Budget(0.05, clock=lambda: now[0])
        >>> budget.join("A")
        >>> budget.start("cpu")
        >>> now[0] = 10.0  # ten seconds of training
        >>> with budget.timed("A"):  # the first log, one second
        ...     now[0] += 1.0
        >>> budget.trained(), budget.account("A").spent
        (10.0, 1.0)
        >>> now[0] += 30.0
        >>> budget.allows("A")  # 1 s spent, 1 s more and 1 s for the final log, against 5% of 40 s
        False
        >>> now[0] += 20.0
        >>> budget.allows("A")  # 3 s against 5% of 60 s
        True
    """

    def __init__(self, fraction: float | None = None, clock: Clock = time.perf_counter) -> None:
        self.fraction = None if fraction is None else check_budget("Budget", fraction)
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        self._owners: dict[str, int] = {}
        self._started: float | None = None
        self._before = 0.0  # training seconds of earlier runs (a resumed fit)
        self._spent_here = 0.0  # seconds of logs since start

    @staticmethod
    def shared(current: Budget, given: bool, wanted: float | Budget | None, who: str) -> Budget:
        """The run's one budget once monitor ``who`` asks for ``wanted`` (a fraction, a :class:`Budget`, or None
        for whatever the run has): ``current`` is the run's budget so far and ``given`` whether another monitor set
        it. Two monitors setting different budgets is a configuration error (ValueError naming both)."""
        if isinstance(wanted, Budget):
            if wanted is not current and given:
                raise ValueError(f"{who}: another monitor of this Trainer set a `budget`: set it once.")
            return wanted
        if wanted is not None:
            if given and current.fraction != wanted:
                raise ValueError(
                    f"{who}: `budget={wanted}`, and another monitor of this Trainer set {current.fraction}; the budget "
                    "is shared, set it once."
                )
            current.fraction = wanted
        return current

    def due(self, who: str) -> bool:
        """Whether monitor ``who``, on "auto", logs now (before the end of the fit, where it always does): one its
        share :meth:`allows`, or, before its first log, when the :meth:`pool` holds what the "auto" monitors spent
        and the final logs they owe (each at the cost of its latest)."""
        if self.account(who).logs == 0:
            return sum(a.spent + a.last for a in self.accounts.values() if a.auto) <= self.pool()
        return self.allows(who)

    def explain(self, who: str) -> str:
        """What "auto" means for monitor ``who`` in this run, in a sentence (said once at the start)."""
        auto = [a for a in self.accounts.values() if a.auto]
        return (
            f"every_n_epochs='auto': logs at the end of the fit, and before it whenever its share of the "
            f"visualization budget allows one more log and still its final one: {100 * self.portion(who):.3g}% of a "
            f"budget of {100 * (self.fraction or 0):.3g}% of the training time ({len(auto)} monitor(s) on 'auto'), "
            "less what monitors on a fixed cadence spend; its first log waits until the monitors' spending leaves "
            "room. `budget=` sets the fraction, `priority=` the shares; an integer `every_n_epochs` logs on a fixed "
            "cadence."
        )

    def join(self, who: str, priority: float = 1.0, auto: bool = True) -> None:
        """Open (or reopen, keeping its spending) the account of monitor ``who``."""
        account = self.accounts.setdefault(who, Account())
        account.auto, account.priority = auto, float(priority)

    def open(self, owner: object, who: str, priority: float = 1.0, auto: bool = True) -> str:
        """Join ``owner`` (a monitor) under ``who``, or ``who 2``, ``who 3``... when another owner holds that name
        (two monitors of one class); returns the account's name, the same for the same owner."""
        name, number = who, 1
        while self._owners.setdefault(name, id(owner)) != id(owner):
            number += 1
            name = f"{who} {number}"
        self.join(name, priority, auto)
        return name

    def account(self, who: str) -> Account:
        return self.accounts[who]

    def start(self, device: torch.device | str) -> None:
        """Start counting training time (once per fit; later calls do nothing), and fix the default fraction for
        ``device``."""
        if self.fraction is None:
            self.fraction = DEFAULT_FRACTION.get(torch.device(device).type, DEFAULT_FRACTION["cpu"])
        if self._started is None:
            self._started, self._spent_here = self.clock(), 0.0

    def stop(self) -> None:
        """End of the fit: the next :meth:`start` counts again, from the training time so far."""
        if self._started is not None:
            self._before, self._started = self.trained(), None

    def trained(self) -> float:
        """Seconds of training so far: the run's time outside the monitors' logs (and earlier runs')."""
        if self._started is None:
            return self._before
        return self._before + max(0.0, self.clock() - self._started - self._spent_here)

    def portion(self, who: str) -> float:
        """The part of the pool that is ``who``'s: its priority over the "auto" monitors' total."""
        priorities = sum(a.priority for a in self.accounts.values() if a.auto)
        return self.accounts[who].priority / max(priorities, 1e-12)

    def pool(self) -> float:
        """Seconds the "auto" monitors together may have spent by now: the fraction of the training time, less the
        fixed-cadence monitors' spending."""
        fixed = sum(a.spent for a in self.accounts.values() if not a.auto)
        return max(0.0, (self.fraction or DEFAULT_FRACTION["cpu"]) * self.trained() - fixed)

    def share(self, who: str) -> float:
        """Seconds monitor ``who`` may have spent by now: the :meth:`pool` times its :meth:`portion`."""
        return self.pool() * self.portion(who)

    def allows(self, who: str) -> bool:
        """Whether one more log of ``who`` and its final one, each costing what its latest did, stay within its
        share."""
        account = self.accounts[who]
        return account.spent + 2 * account.last <= self.share(who)

    @contextmanager
    def timed(self, who: str, device: torch.device | str = "cpu") -> Iterator[None]:
        """Time one log of ``who`` (synchronising a CUDA device before and after, so its queued work is counted
        where it belongs)."""
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = self.clock()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            cost = max(0.0, self.clock() - began)
            account = self.accounts[who]
            account.spent, account.logs, account.last = account.spent + cost, account.logs + 1, cost
            self._spent_here += cost

    def costs(self, who: str) -> dict[str, float]:
        """``seconds``: the latest log's cost; ``fraction``: all of ``who``'s logs over the training time so far."""
        account = self.accounts[who]
        return {"seconds": account.last, "fraction": account.spent / max(self.trained(), 1e-12)}

    def state_dict(self, who: str) -> dict[str, Any]:
        """What a checkpoint keeps of ``who``'s account, and the training time so far."""
        return {**asdict(self.accounts[who]), "trained": self.trained()}

    def load_state_dict(self, who: str, state: dict[str, Any]) -> None:
        """Restore ``who``'s spending and the training time of a checkpoint (the largest any monitor saved)."""
        account = self.accounts.setdefault(who, Account())
        account.spent, account.logs, account.last = float(state["spent"]), int(state["logs"]), float(state["last"])
        self._before = max(self._before, float(state["trained"]))


def check_budget(who: str, fraction: Any) -> float:
    """``fraction`` if it is a number in (0, 1], else a ValueError naming ``who``.

    Example:
        >>> check_budget("FilterMonitor", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: FilterMonitor: `budget` must be a fraction of training time in (0, 1], got 1.5.
    """
    return check_number(who, "budget", fraction, lambda v: 0.0 < v <= 1.0, "a fraction of training time in (0, 1]")


class Schedule:
    """When one monitor logs, Trainer-free: ``every_n_epochs`` (an integer: every this many epochs; ``"auto"``:
    within its share of the run's :class:`Budget`, weighted by ``priority``) and, whatever the cadence, after the
    last epoch. ``budget`` is the fraction (or the :class:`Budget`) this monitor sets for the run, None to take the
    run's. Its account in the budget is opened by :meth:`join`; a checkpoint's spending waits until then.

    Example:
        >>> schedule = Schedule("MyMonitor", every_n_epochs=2)
        >>> [schedule.due(Budget(), epoch, last=epoch == 4) for epoch in range(5)]
        [False, True, False, True, True]
    """

    def __init__(
        self, who: str, every_n_epochs: int | str = "auto", budget: float | Budget | None = None, priority: float = 1.0
    ) -> None:
        self.who, self.auto = who, every_n_epochs == "auto"
        if not self.auto:
            every_n_epochs = check_positive_int(who, "every_n_epochs", every_n_epochs)
        if budget is not None and not isinstance(budget, Budget):
            budget = check_budget(who, budget)
        what = "a positive number (a weight in the budget)"
        priority = check_number(who, "priority", priority, lambda v: v > 0, what)
        self.every_n_epochs, self.budget, self.priority = every_n_epochs, budget, priority
        self.account = who  # this monitor's name in the budget (unique per run)
        self._pending: dict[str, Any] | None = None  # a checkpoint's spending, until the account is opened

    def join(self, run: Any, owner: object, opens: bool = True) -> None:
        """Give ``run`` (what holds the run's ``budget`` and ``budget_given``: the probe service) this monitor's
        budget (:meth:`Budget.shared`), and, when it ``opens`` (a monitor that applies), its account."""
        run.budget = Budget.shared(run.budget, run.budget_given, self.budget, self.who)
        run.budget_given = run.budget_given or self.budget is not None
        if opens:
            self.account = run.budget.open(owner, self.who, self.priority, self.auto)
            if self._pending is not None:
                run.budget.load_state_dict(self.account, self._pending)
                self._pending = None

    def due(self, budget: Budget, epoch: int, last: bool = False) -> bool:
        """Whether to log after ``epoch`` (counted from 0): on the cadence, within the budget, or when it is the
        ``last`` epoch of the fit."""
        if isinstance(self.every_n_epochs, int):
            return last or (epoch + 1) % self.every_n_epochs == 0
        return last or budget.due(self.account)

    def state_dict(self, budget: Budget) -> dict[str, Any]:
        return {"budget": budget.state_dict(self.account)} if self.account in budget.accounts else {}

    def load_state_dict(self, budget: Budget, state: dict[str, Any]) -> None:
        if "budget" in state:
            if self.account in budget.accounts:
                budget.load_state_dict(self.account, state["budget"])
            else:
                self._pending = state["budget"]
