"""One progress display for every long loop: rich bars on stderr, nothing when quiet."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


class Progress:
    """A thin wrapper over ``rich.progress`` that does nothing in quiet mode.

    ``task(description, total)`` returns ``advance(n=1, info="")``; a finished task is
    removed. ``log(msg)`` prints above the bars (or plainly when there are none).
    """

    def __init__(self, quiet: bool = False, transient: bool = True):
        self.quiet = quiet
        self.transient = transient
        self._p = None

    def __enter__(self):
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self._p = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                   MofNCompleteColumn(), TimeElapsedColumn(),
                                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                   console=Console(stderr=True), transient=self.transient)
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def task(self, description: str, total: int) -> Callable[..., None]:
        if self._p is None:
            return lambda n=1, info="": None
        tid = self._p.add_task(description, total=total, info="")

        def advance(n=1, info=""):
            self._p.update(tid, advance=n, info=info)
            if self._p.tasks[self._p.task_ids.index(tid)].finished:
                self._p.remove_task(tid)

        return advance

    def log(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg, markup=False, highlight=False)
        elif not self.quiet:
            print(msg, file=sys.stderr)


@contextlib.contextmanager
def bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A single bar: ``with bar(True, "decoding x", n) as advance: advance(k)``."""
    with Progress(quiet=not enabled or total == 0, transient=False) as p:
        advance = p.task(description, total)
        yield lambda k=1: advance(k)


def say(quiet: bool, msg: str) -> None:
    """A status line on stderr unless quiet."""
    if not quiet:
        print(msg, file=sys.stderr)
