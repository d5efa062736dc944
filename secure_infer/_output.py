"""How the command line prints: styled tables in a terminal, every figure in full everywhere.

Every ``secure-infer`` command prints through one :class:`Output`, so one rule
holds for all of them:

- stdout is a terminal: rich draws styled tables sized to the terminal. Columns
  wrap only between words, so no number or name is ever cut; a table that
  cannot fit that way is printed plain instead.
- stdout is a pipe or a file (``secure-infer demo | cat``, CI logs): tables come
  out as aligned Markdown and lines are never wrapped, so every number and
  word reads in full and the output can be pasted into an issue or a document.
- Progress goes to stderr, with an estimate of the time left computed from the
  steps done so far: a live bar in a terminal, a line now and then elsewhere.
  stdout then holds only the results.
- A long command ends with exactly one line saying where its report is
  (:meth:`Output.report`).

``TTY_COMPATIBLE=1`` (or ``FORCE_COLOR``) makes rich treat a pipe as a terminal,
``TTY_COMPATIBLE=0`` the reverse; ``COLUMNS`` sets a terminal's width.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from rich import box
from rich import progress as rich_progress
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from secure_infer._errors import ParameterError

if TYPE_CHECKING:
    from secure_infer._wrap import Report

__all__ = ["Output", "Progress", "TextTable", "estimate_left", "fit_widths", "format_seconds", "report_table"]

Align = Literal["left", "right"]


def _words(text: str) -> list[str]:
    return text.split() or [""]


def fit_widths(minimum: list[int], maximum: list[int], available: int) -> list[int] | None:
    """Column widths that fit ``available`` cells, each between its minimum and maximum.

    Every column gets its natural (maximum) width when they all fit; otherwise
    each starts at its minimum (its longest word) and the room left is shared in
    proportion to how much each would still grow. ``None`` when even the minimums
    do not fit: the caller then prints the table plain rather than cut a word.
    """
    if sum(maximum) <= available:
        return list(maximum)
    if sum(minimum) > available:
        return None
    spare = available - sum(minimum)
    slack = [hi - lo for lo, hi in zip(minimum, maximum, strict=True)]
    total = sum(slack)
    widths = [lo + s * spare // total for lo, s in zip(minimum, slack, strict=True)]
    left = available - sum(widths)
    for i in sorted(range(len(widths)), key=lambda k: slack[k], reverse=True):
        if left == 0:
            break
        if widths[i] < maximum[i]:
            widths[i] += 1
            left -= 1
    return widths


@dataclass
class TextTable:
    """A table of already formatted cells, printable styled (rich) or as Markdown.

    Commands build one of these instead of a rich ``Table`` so that the choice
    between styled and plain output is made in one place, by :class:`Output`.
    ``notes`` are lines printed under the table (footnotes, units).
    """

    title: str
    columns: list[str] = field(default_factory=list)
    aligns: list[Align] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_column(self, name: str, *, right: bool = False) -> None:
        """Add a column; ``right`` aligns it right (numbers)."""
        if self.rows:
            raise ParameterError(f"table {self.title!r}: add every column before the first row")
        self.columns.append(name)
        self.aligns.append("right" if right else "left")

    def add_row(self, *cells: object) -> None:
        """Add a row; each cell is shown as ``str(cell)``, on one line."""
        if len(cells) != len(self.columns):
            raise ParameterError(f"table {self.title!r}: a row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([" ".join(str(c).split("\n")) for c in cells])

    def _all_rows(self) -> list[list[str]]:
        return [self.columns, *self.rows]

    def markdown(self, *, aligned: bool = True) -> str:
        """The table as a Markdown pipe table (no title, no notes).

        ``aligned`` pads every column to its widest cell, so that the text reads
        as a table without a Markdown viewer; unaligned is more compact for files.
        """
        cells = [[c.replace("|", "\\|") for c in row] for row in self._all_rows()]
        widths = [max(3, *(cell_len(row[i]) for row in cells)) if aligned else 3 for i in range(len(self.columns))]

        def line(row: list[str]) -> str:
            if not aligned:
                return "| " + " | ".join(row) + " |"
            padded = [(" " * (w - cell_len(c)) + c) if a == "right" else (c + " " * (w - cell_len(c)))
                      for c, w, a in zip(row, widths, self.aligns, strict=True)]
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "right" else (":" + "-" * (w + 1))
                              for w, a in zip(widths, self.aligns, strict=True)) + "|"
        if not aligned:
            rule = "|" + "|".join("---:" if a == "right" else "---" for a in self.aligns) + "|"
        return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])

    def plain(self) -> str:
        """Title, Markdown table and notes: the whole table as plain text, nothing cut."""
        parts = [self.title, "", self.markdown()]
        if self.notes:
            parts += ["", *self.notes]
        return "\n".join(parts)

    def rich(self, width: int) -> Table | None:
        """A styled table at most ``width`` cells wide that splits no word; ``None`` if none fits.

        Tries rich's usual boxed table, then a compact one (no vertical rules, no
        padding) for narrow terminals.
        """
        rows = self._all_rows()
        n = len(self.columns)
        longest_word = [max(cell_len(w) for row in rows for w in _words(row[i])) for i in range(n)]
        longest_cell = [max(cell_len(row[i]) for row in rows) for i in range(n)]
        for style in _STYLES:
            widths = fit_widths(longest_word, longest_cell, width - _overhead(style, n))
            if widths is not None:
                return self._styled(style, widths)
        return None

    def _styled(self, style: dict[str, Any], widths: list[int]) -> Table:
        table = Table(title=self.title, **style)
        for name, align, w in zip(self.columns, self.aligns, widths, strict=True):
            table.add_column(name, justify=align, overflow="fold", width=w)
        for row in self.rows:
            table.add_row(*(Text(c) for c in row))
        return table


# rich's usual table, then a compact one: its columns are set apart by one space, the header by a rule
_STYLES: tuple[dict[str, Any], ...] = ({}, {"box": box.SIMPLE_HEAD, "show_edge": False, "padding": 0})


def _overhead(style: dict[str, Any], columns: int) -> int:
    """Cells a table of ``style`` spends on rules and padding around ``columns`` columns of content."""
    table = Table(**style)
    for _ in range(columns):
        table.add_column(width=1)
    measuring = Console(width=10_000, file=io.StringIO())
    return Measurement.get(measuring, measuring.options, table).maximum - columns


def report_table(report: Report) -> TextTable:
    """How a model was converted (``EncryptedModel.report()``, the server's report) as a table."""
    table = TextTable(f"secure-infer report: backend={report.backend}")
    for name in ("layer", "type", "how", "detail"):
        table.add_column(name)
    for c in report.conversions:
        detail = c.detail
        if c.max_abs_error is not None:
            detail += f" (max abs error on sample {c.max_abs_error:.2e})"
        if c.bound is not None:
            detail += f" (worst case over accepted inputs <= {c.bound:.2e})"
        table.add_row(c.path, c.layer, c.kind, detail)
    table.notes += [f"{key}: {value}" for key, value in report.facts.items()]
    if report.sample_max_abs_error is not None:
        table.notes.append(f"whole model: max abs error vs plaintext on sample_input = {report.sample_max_abs_error:.3e}")
    return table


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``, the way rich shows elapsed time."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def estimate_left(elapsed: float, completed: float, total: float) -> float | None:
    """Seconds left if the remaining steps take as long as the completed ones did on average."""
    if completed <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed / completed * (total - completed))


class _EtaColumn(rich_progress.ProgressColumn):
    """The time left, from the average time of the steps completed so far."""

    def render(self, task: rich_progress.Task) -> Text:
        if task.finished:
            return Text("done", style="progress.remaining")
        left = estimate_left(task.elapsed or 0.0, task.completed, task.total or 0)
        shown = "-:--:-- left" if left is None else f"about {format_seconds(left)} left"
        return Text(shown, style="progress.remaining")


@dataclass
class _LineTask:
    label: str  # what the task is, as added
    description: str  # what runs now
    total: int
    started: float
    completed: float = 0
    shown: float = 0.0
    done: bool = False


class Progress:
    """Progress of a long command, with an estimate of the time left; a context manager.

    In a terminal it is rich's live bar; elsewhere it writes a line when a task
    starts, at most every ``interval`` seconds while it runs, and when it ends,
    so a log shows how far a run got and how long the rest should take.
    """

    def __init__(self, console: Console, *, live: bool, redirect_stdout: bool = False, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._clock = clock
        self._interval = interval
        self._tasks: dict[int, _LineTask] = {}
        self._rich: rich_progress.Progress | None = None
        if live:
            self._rich = rich_progress.Progress(
                rich_progress.TextColumn("[progress.description]{task.description}"),
                rich_progress.BarColumn(),
                rich_progress.MofNCompleteColumn(),
                rich_progress.TimeElapsedColumn(),
                _EtaColumn(),
                console=console, transient=False, redirect_stdout=redirect_stdout, get_time=clock,
            )

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()

    def _say(self, text: str) -> None:
        self._console.out(text, highlight=False)

    def add_task(self, description: str, total: int) -> int:
        """Start a task of ``total`` steps; returns its id."""
        if self._rich is not None:
            return int(self._rich.add_task(description, total=total))
        task_id = len(self._tasks)
        now = self._clock()
        self._tasks[task_id] = _LineTask(description, description, total, now, shown=now)
        self._say(f"{description}: started, {total} steps")
        return task_id

    def advance(self, task_id: int, steps: float = 1, *, description: str | None = None) -> None:
        """Count ``steps`` more as done (and optionally say what runs now)."""
        if self._rich is not None:
            self._rich.update(rich_progress.TaskID(task_id), advance=steps, description=description)
            return
        task = self._tasks[task_id]
        task.completed += steps
        if description is not None:
            task.description = description
        self._line(task)

    def complete(self, task_id: int, *, description: str | None = None) -> None:
        """Mark the task finished, whatever count it reached (steps skipped or estimated)."""
        if self._rich is not None:
            total = next(t.total for t in self._rich.tasks if t.id == task_id)
            self._rich.update(rich_progress.TaskID(task_id), completed=total, description=description)
            return
        task = self._tasks[task_id]
        if description is not None:
            task.description = description
        task.completed = task.total
        self._line(task)

    def _line(self, task: _LineTask) -> None:
        now = self._clock()
        elapsed = now - task.started
        if task.done:
            return
        if task.completed >= task.total:
            task.done = True
            self._say(f"{task.label}: {task.total}/{task.total} done in {format_seconds(elapsed)}")
        elif now - task.shown >= self._interval:
            task.shown = now
            left = estimate_left(elapsed, task.completed, task.total)
            eta = "time left unknown yet" if left is None else f"about {format_seconds(left)} left"
            now_running = f" ({task.description})" if task.description != task.label else ""
            self._say(f"{task.label}: {task.completed:g}/{task.total}{now_running}, {format_seconds(elapsed)} elapsed, "
                      f"{eta}")


class Output:
    """Where a command prints its results (stdout) and its progress (stderr).

    Build one per command run: the consoles look at the streams and the
    environment (``COLUMNS``, ``TTY_COMPATIBLE``) when they are created.
    """

    def __init__(self, console: Console | None = None, status: Console | None = None) -> None:
        self.console = console if console is not None else Console()
        self.status = status if status is not None else Console(stderr=True)

    @property
    def plain(self) -> bool:
        """True when stdout is not a terminal: Markdown tables and unwrapped lines."""
        return not self.console.is_terminal

    def line(self, text: str = "") -> None:
        """Print one line of text as is (no markup); wrapped between words only in a terminal."""
        if self.plain:
            self.console.out(text, highlight=False)
        else:
            self.console.print(text, markup=False, emoji=False)

    def lines(self, texts: Iterable[str]) -> None:
        """Print each of ``texts`` with :meth:`line`."""
        for text in texts:
            self.line(text)

    def table(self, table: TextTable) -> None:
        """Print a table: styled if stdout is a terminal wide enough, else as Markdown."""
        styled = None if self.plain else table.rich(self.console.width)
        if styled is None:  # never cut: long lines as they are (a terminal folds them itself)
            self.console.out(table.plain() + "\n", highlight=False)
            return
        self.console.print(styled)
        self.lines(table.notes)

    def progress(self) -> Progress:
        """A progress display on stderr (live bars only when stderr is a terminal)."""
        return Progress(self.status, live=self.status.is_terminal,
                        redirect_stdout=self.console.is_terminal and self.status.is_terminal)

    def report(self, where: str | Path) -> None:
        """The command's last line: where its report is."""
        self.line(f"report: {where}")
