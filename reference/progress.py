"""One small progress display for long steps (README.md, "Command line"; spec/sampling.md,
"Loaders": ``progress=True``).

On a terminal it is one line redrawn in place (``\\r``), at most every ``interval``
seconds (always for the first and last step). Elsewhere (a pipe, a log file, a
notebook's stderr) it writes a plain line at most every ``plain_interval`` seconds,
so a short run prints nothing and a long one leaves a readable log. Nothing here
depends on a third-party progress library.
"""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """Progress over ``total`` steps of ``what`` (e.g. "indexing", "epoch 0"), counted in
    ``unit`` (files, batches), written to ``stream`` (stderr by default).

    Hidden when ``total`` is below ``min_total`` (one file needs no bar). :meth:`clear`
    erases a terminal line before other output is printed; :meth:`close` ends it.
    ``clock`` is the time source (tests pass a fake one).
    """

    def __init__(self, total: int, what: str, stream=None, interval: float = 0.1, *,
                 unit: str = "files", plain_interval: float = 10.0, min_total: int = 2,
                 clock=time.monotonic):
        self.total, self.what, self.unit = int(total), what, unit
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = self.total >= min_total
        self.live = self.shown and self.tty
        self.interval = interval if self.tty else plain_interval
        self.clock = clock
        self.start = clock()
        self.last_draw = None if self.tty else self.start
        self.width = 0

    def line(self, done: int, name: str = "") -> str:
        """The text of the display after ``done`` steps (``name``: what was just done)."""
        rate = done / max(self.clock() - self.start, 1e-9)
        text = f"{self.what} {done}/{self.total} {self.unit} ({rate:.1f}/s)"
        if name:
            text += f" {os.path.basename(os.fspath(name))[:40]}"
        return text

    def step(self, done: int, name: str = ""):
        """``done`` of ``total`` steps are done, the last being ``name``."""
        if not self.shown:
            return
        now = self.clock()
        if self.tty:
            if (self.last_draw is not None and done < self.total
                    and now - self.last_draw < self.interval):
                return
        elif now - self.last_draw < self.interval:  # plain lines: throttled, the last too
            return
        self.last_draw = now
        text = self.line(done, name)
        if self.tty:
            pad = max(self.width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self):
        """Erase the terminal line (before printing something else)."""
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def close(self):
        self.clear()


def iterate(iterable, total: int, what: str, *, unit: str = "batches", stream=None):
    """Yield from ``iterable`` with a :class:`Progress` over its ``total`` items."""
    bar = Progress(total, what, stream=stream, unit=unit, min_total=1)
    try:
        for done, item in enumerate(iterable, 1):
            yield item
            bar.step(done)
    finally:
        bar.close()


__all__ = ["Progress", "iterate"]
