"""What a person watches while a run goes: every worker's text as it streams (LiveView) and a status
line at the bottom of the terminal (StatusLine).

Two shapes. *Columns* (a terminal wide enough for every worker): a header row of names, then each
worker's lines in its own column, separated by " │ " so that they are told apart without colour; a
row holds one worker's line and leaves the others' cells blank. *Labelled lines* (a narrow terminal,
a pipe, a file): every line starts with "[name #step]". In both a line breaks between words (a word
longer than the column is cut), and a worker's line ends only at its own newline, when its step ends,
or when the run ends. A step opens with its header ("[Alice #3]") and, when the engine wrote one, the
opener or the self-check question after "» ".
"""

from __future__ import annotations

import os
import sys
import time

import click

from .engine import DecodeProgress, StepEvent, StepStart, TokenEvent

COLORS = ["cyan", "magenta", "yellow", "green", "blue", "red", "bright_cyan", "bright_magenta"]
SEPARATOR = " │ "
MIN_COLUMN = 28  # narrower columns read worse than labelled lines
ENGINE_MARK = "» "  # before what the engine wrote into a step (opener, self-check question)


def wrap(text: str, width: int) -> list[str]:
    """`text` (one line) in lines of at most `width`, broken at the last space that fits; a word longer
    than `width` is cut."""
    lines = []
    while len(text) > width:
        cut = text.rfind(" ", 0, width + 1)
        cut = cut if cut > 0 else width
        lines.append(text[:cut])
        text = text[cut:].lstrip(" ")
    return [*lines, text] if text else lines


class StatusLine:
    """One line on a terminal (stderr), rewritten in place at most once every `interval` seconds and
    cleared at the end. When stdout is the same screen, the view hides it while it prints a line."""

    def __init__(self, stream=None, interval: float = 0.25, width: int | None = None, shares_screen: bool = True,
                 clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.shares_screen, self.clock = interval, shares_screen, clock
        self.width = width or _columns(self.stream)
        self.text, self.shown, self.last = "", False, None

    def update(self, text: str) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return
        self.last, self.text = now, text[:max(self.width - 1, 1)]  # never wrapped: \r could not erase it
        self._write("\r\x1b[K" + self.text)
        self.shown = True

    def hide(self) -> None:
        if self.shown and self.shares_screen:
            self._write("\r\x1b[K")
            self.shown = False

    def show(self) -> None:
        if self.text and not self.shown and self.shares_screen:
            self._write(self.text)
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self._write("\r\x1b[K")
        self.text, self.shown = "", False

    def _write(self, s: str) -> None:
        self.stream.write(s)
        self.stream.flush()


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80  # a terminal of unknown size says 0
    except (AttributeError, OSError, ValueError):
        return 80


def status_text(p: DecodeProgress, tokens_per_s: float) -> str:
    return (f"step {p.step}/{p.total} · {tokens_per_s:.1f} tok/s · "
            f"context {p.ctx_used}/{p.ctx_size} ({100 * p.ctx_used / max(p.ctx_size, 1):.0f}%)")


class LiveView:
    """Each worker's text as it streams, in columns on a wide terminal, labelled lines otherwise (see the
    module's docstring); coloured when `color`; `status`: a StatusLine to keep up to date, or None."""

    def __init__(self, names, color: bool, quiet: bool, width: int | None = None,
                 status: StatusLine | None = None):
        self.names, self.color, self.quiet, self.status = names, color, quiet, status
        self.buf = {n: "" for n in names}
        self.step = {n: 0 for n in names}
        self.fresh = {n: False for n in names}  # its step has no text yet: spaces before the first word go
        n = len(names)
        self.col = (width - len(SEPARATOR) * (n - 1)) // n if width and n > 1 else 0
        if self.col < MIN_COLUMN:
            self.col = 0  # too narrow for columns
        self.header_shown = False
        self.tokens, self.t0 = 0, None

    def event(self, ev) -> None:
        """Show one of the engine's events (the others are not the view's)."""
        if isinstance(ev, TokenEvent):
            self.token(ev.worker, ev.text)
        elif isinstance(ev, StepEvent):
            self.flush(ev.worker)  # the others' lines are still being written
        elif isinstance(ev, StepStart):
            self.step_start(ev)
        elif isinstance(ev, DecodeProgress):
            self.progress(ev)

    def token(self, name: str, text: str) -> None:
        self.tokens += 1
        if self.fresh[name]:
            text = text.lstrip(" ")
            self.fresh[name] = not text
        self.buf[name] += text
        while "\n" in self.buf[name] or (self.col and len(self.buf[name]) > self.col):
            if "\n" in self.buf[name][:self.col + 1 if self.col else None]:
                line, self.buf[name] = self.buf[name].split("\n", 1)
            else:  # the buffer is longer than the column: its first line, broken between words
                line = wrap(self.buf[name], self.col)[0]
                self.buf[name] = self.buf[name][len(line):].lstrip(" ")
            self._emit(name, line)

    def step_start(self, ev: StepStart) -> None:
        """A step's header, and what the engine opened it with (the opener, the self-check question)."""
        if self.t0 is None:
            self.t0 = time.monotonic()
        self.flush(ev.worker)
        self.step[ev.worker], self.fresh[ev.worker] = ev.step, True
        if self.col:
            self._emit(ev.worker, f"[{ev.worker} #{ev.step}]", "header")
        opening = " ".join(ev.opening.split())
        if opening:
            for line in wrap(ENGINE_MARK + opening, self.col) if self.col else [ENGINE_MARK + opening]:
                self._emit(ev.worker, line, "engine")

    def progress(self, p: DecodeProgress) -> None:
        if self.status is not None and not self.quiet:
            elapsed = time.monotonic() - (self.t0 if self.t0 is not None else time.monotonic())
            self.status.update(status_text(p, self.tokens / elapsed if elapsed > 0 else 0.0))

    def flush(self, name: str | None = None) -> None:
        """Print what is left of one worker's line (its step ended), or of everyone's (the run ended)."""
        for n in [name] if name is not None else self.names:
            if self.buf[n]:
                self._emit(n, self.buf[n])
                self.buf[n] = ""

    def close(self) -> None:
        """The run ended: everyone's last line, and the status line gone."""
        self.flush()
        if self.status is not None:
            self.status.clear()

    def _paint(self, name: str, text: str, kind: str = "text") -> str:
        if not self.color:
            return text
        fg = COLORS[self.names.index(name) % len(COLORS)]
        return click.style(text, fg=fg, bold=kind == "header", dim=kind == "engine")

    def _emit(self, name: str, line: str, kind: str = "text") -> None:
        if self.quiet or not line.strip():
            return
        if self.col:
            if not self.header_shown:  # the names over their columns, once
                self.header_shown = True
                self._echo(self._row({n: self._paint(n, f"[{n}]", "header") for n in self.names},
                                     {n: len(n) + 2 for n in self.names}))
            self._echo(self._row({name: self._paint(name, line, kind)}, {name: len(line)}))
        else:
            step = self.step[name]
            label = f"[{name} #{step}]" if step else f"[{name}]"
            self._echo(f"{self._paint(name, label, 'header')} {self._paint(name, line, kind)}")

    def _row(self, cells: dict[str, str], lengths: dict[str, int]) -> str:
        """One row of columns: the given cells (painted text and its length on screen), the others blank."""
        sep = f" {click.style('│', dim=True)} " if self.color else SEPARATOR
        parts = [cells.get(n, "") + " " * (self.col - lengths.get(n, 0)) for n in self.names]
        return sep.join(parts).rstrip(" ")

    def _echo(self, line: str) -> None:
        if self.status is not None:
            self.status.hide()
        click.echo(line, color=self.color)  # the caller decided (--color on keeps them in a pipe)
        if self.status is not None:
            self.status.show()
