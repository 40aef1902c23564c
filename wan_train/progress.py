"""Progress that shows wherever the output goes: rich's live bar on a terminal; elsewhere (a file, nohup, a SLURM
job's output, a pipe) plain lines, one when a task starts, then at least every `every_s` seconds and at its end,
each with count/total, rate, elapsed time and time left. Used by the data tools, caching, generation and eval
sweeps (training has its own step lines: wan_train.training.callbacks.ProgressLines)."""

import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

EVERY_S = 30.0  # the longest silence of a plain-line progress


class RateColumn(ProgressColumn):
    def render(self, task):
        return Text(f"{task.speed:.2f}/s" if task.speed else "-/s")


def progress(unit: str = "", *, console: Console | None = None, every_s: float = EVERY_S):
    """`with progress("steps") as bar: task = bar.add_task("denoising", total=n); bar.advance(task)` (or
    bar.update(task, advance=1, description=...)): a rich Progress on a terminal, PlainProgress otherwise."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        *([TextColumn(unit)] if unit else []), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    return PlainProgress(unit, stream=console.file, every_s=every_s)


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0
    started: float = field(default_factory=time.monotonic)
    said: float = 0.0  # when its last line was written
    said_at: float = -1  # the count it gave
    finished: bool = False


class PlainProgress:
    """The part of rich's Progress interface the tools use, as plain lines:

        make_shards: 12/40 shards  0.41/s  0:00:29 elapsed  0:01:08 left
    """

    def __init__(self, unit: str = "", *, stream=None, every_s: float = EVERY_S, clock=time.monotonic):
        self.unit, self.every_s, self.clock = unit, every_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tasks: list[_Task] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            for task in self.tasks:
                if not task.finished and task.said_at != task.completed:  # where it ended, unless just said
                    self._say(task)
        return False

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        self.tasks.append(_Task(description, total, started=self.clock(), said=self.clock()))
        self._say(self.tasks[-1])
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        done = task.total is not None and task.completed >= task.total
        if (done and not task.finished) or self.clock() - task.said >= self.every_s:
            task.finished = done
            self._say(task)

    def _say(self, task: _Task) -> None:
        now = self.clock()
        task.said, task.said_at, elapsed = now, task.completed, now - task.started
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        rate = task.completed / elapsed if elapsed > 0 and task.completed else None
        parts = [f"{task.description}: {count}{f' {self.unit}' if self.unit else ''}",
                 f"{rate:.2f}/s" if rate else "-/s", f"{_clock(elapsed)} elapsed"]
        if task.total is not None and rate:
            parts.append(f"{_clock(max(0.0, task.total - task.completed) / rate)} left")
        print("  ".join(parts), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
