"""A one-line status on stderr for work that can take more than a moment (a long ``inspect``, ``faithfulness``).

Nothing is written while the work is quick: the line appears only once a step has run ``after`` seconds. On a
terminal it is redrawn in place with the elapsed time and erased at the end; elsewhere (a pipe, a log, CI) each
step that runs long prints one plain line, once. stdout, where the results go, is never touched.

>>> import io
>>> err = io.StringIO()
>>> with Status("inspect", after=0.0, stream=err) as s:
...     s.step("running the model on 512 tokens")
>>> "inspect: running the model on 512 tokens" in err.getvalue()
True
"""

from __future__ import annotations

import sys
import threading
import time

SHOW_AFTER = 1.0        # seconds a step runs before its line appears (so that a > ~2 s step is never silent)
REDRAW_EVERY = 0.5      # seconds between redraws on a terminal


class Status:
    """``with Status("label") as s: s.step("what runs now"); ...``: the current step, shown once it runs long."""

    def __init__(self, label: str, after: float | None = None, stream=None):
        self.label, self.after = label, float(SHOW_AFTER if after is None else after)
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.text, self.started, self.shown_text, self.drawn = "", time.perf_counter(), None, False
        self.lock, self.done = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Status:
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        with self.lock:
            if self.tty and self.drawn:
                self._write("\r\x1b[K")                    # erase the line: the results follow on stdout

    def step(self, text: str) -> None:
        """Name the step that runs now (its clock starts now)."""
        with self.lock:
            self.text, self.step_started = text, time.perf_counter()
        if self.after <= 0:
            self._show()

    def _watch(self) -> None:
        while not self.done.wait(min(self.after, REDRAW_EVERY) if self.after > 0 else REDRAW_EVERY):
            started = getattr(self, "step_started", self.started)
            if time.perf_counter() - started >= self.after:
                self._show()

    def _show(self) -> None:
        with self.lock:
            if not self.text:
                return
            line = f"{self.label}: {self.text}"
            if self.tty:
                self._write(f"\r\x1b[K{line} ({time.perf_counter() - self.started:.0f} s)")
                self.drawn = True
            elif self.shown_text != self.text:
                self._write(line + "\n")
            self.shown_text = self.text

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):                     # a closed stderr must not break the command
            pass
