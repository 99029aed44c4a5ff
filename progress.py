"""Progress and warnings on stderr: a rich bar on a terminal; where stderr is a log (Slurm, nohup, CI), plain lines
instead; a warning as one `warning: …` line (`show_warning`), in the command and in its worker processes, and the
warnings of worker processes and Ray tasks sent back to the command, each text shown once (`relayed`,
`show_relayed`).

Rich draws nothing to a log until the end, and then one bar cut at 80 columns; a long cluster job's log stayed empty
for hours. `LogProgress` prints one line per task when it starts, then whenever both LINE_SECONDS have passed and
LINE_FRACTION of its total is done since the last line (so at most every 30 s, and every 5 % at most), and when it
ends.
"""

from __future__ import annotations

import pickle
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LINE_SECONDS = 30.0
LINE_FRACTION = 0.05


@dataclass
class _Task:
    description: str
    total: float
    completed: float
    visible: bool
    fields: dict[str, Any]
    started: float
    start_completed: float
    last_line: float
    last_completed: float
    done: bool = field(default=False)


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LogProgress:
    """The part of `rich.progress.Progress` the package uses (a context; `add_task`, `update`), as plain lines:
    "DESCRIPTION: 30/60 UNIT (50%) · FIELDS · elapsed 0:01:02 · ETA 0:01:02". `template` formats the task's fields
    (e.g. "done {done}"); `clock` is for tests."""

    def __init__(self, unit: str = "", template: str = "", disable: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unit, self.template, self.disable, self.clock = unit, template, disable, clock
        self.tasks: list[_Task] = []

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:
            if not task.done and task.completed > task.last_completed:
                self._line(task)  # the last state of a task that did not reach its total (an error, Ctrl-C)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, visible: bool = True,
                 **fields: Any) -> int:
        now = self.clock()
        task = _Task(description, float(total or 0), float(completed), visible, fields, now, float(completed), now,
                     float(completed))
        self.tasks.append(task)
        self._line(task)
        return len(self.tasks) - 1

    def update(self, task_id: int, advance: float = 0, completed: float | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        task.completed = float(completed) if completed is not None else task.completed + advance
        task.fields.update(fields)
        now = self.clock()
        finished = task.total > 0 and task.completed >= task.total
        step = max(LINE_FRACTION * task.total, 1.0)
        if finished or (now - task.last_line >= LINE_SECONDS and task.completed - task.last_completed >= step):
            self._line(task)
            task.done = finished

    def _line(self, task: _Task) -> None:
        task.last_line, task.last_completed = self.clock(), task.completed
        if self.disable or not task.visible or task.done:
            return
        parts = [f"{task.description}: {task.completed:.0f}/{task.total:.0f}{' ' + self.unit if self.unit else ''}"
                 + (f" ({100 * task.completed / task.total:.0f}%)" if task.total else "")]
        if self.template:
            parts.append(self.template.format(**task.fields))
        elapsed = task.last_line - task.started
        parts.append(f"elapsed {_clock_text(elapsed)}")
        rate = (task.completed - task.start_completed) / elapsed if elapsed > 0 else 0.0
        if rate > 0 and task.total > task.completed:
            parts.append(f"ETA {_clock_text((task.total - task.completed) / rate)}")
        print(" · ".join(parts), file=sys.stderr, flush=True)


def stderr_is_terminal() -> bool:
    """True when stderr is a terminal (as rich judges it: FORCE_TERMINAL and the like count)."""
    from rich.console import Console

    return Console(stderr=True).is_terminal


def progress_display(bar: Callable[[], Any], unit: str = "", template: str = "", disable: bool = False) -> Any:
    """`bar()` (a rich Progress) on a terminal, else a `LogProgress` printing plain lines."""
    return bar() if stderr_is_terminal() else LogProgress(unit, template, disable)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """`warnings.showwarning` of the command and of its worker processes: a warning is one `warning: …` line on
    stderr, as an error is one `error: …` line (Python's own shows the file, line and source of the call)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def relayed(caught: list[warnings.WarningMessage]) -> list[Warning]:
    """The warnings a worker process or Ray task `caught` (emptied), to send to the command, which shows them as its
    own (`show_relayed`): a worker's stderr reaches the command late or, once the command has ended, never, and each
    worker would print a warning every run raises once more."""
    messages = []
    while caught:  # one at a time: a trainer thread may be adding one
        warned = caught.pop(0)
        messages.append(_crossing(warned.message if isinstance(warned.message, Warning)
                                  else warned.category(warned.message)))
    return messages


def _crossing(message: Warning) -> Warning:
    """`message` if it crosses to the command intact (pickled and back), else its nearest built-in category with its
    text: a category whose constructor takes other arguments, or one holding a lock, would fail to cross and take the
    runs sent with it along."""
    try:
        pickle.loads(pickle.dumps(message))
    except Exception:  # noqa: BLE001 — any failure to round-trip
        return next(c for c in type(message).__mro__ if c.__module__ == "builtins")(str(message))
    return message


def show_relayed(messages: list[Warning], shown: set[str]) -> None:
    """Show warnings sent back from workers as the command's own (one `warning: …` line each, through the command's
    filters), each text once: `shown` holds the texts a command (a grid, a set of builds) has shown."""
    for message in messages:
        text = f"{type(message).__name__}: {message}"
        if text not in shown:
            shown.add(text)
            warnings.warn(message, stacklevel=1)
