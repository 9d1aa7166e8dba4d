"""Overall progress of the commands that train several runs (sweep, compare, few-shot): "run i
of N" with the time elapsed and an ETA, on the main process, above each run's own bars.

On a terminal it is a tqdm bar at position 0, and the runs' bars nest under it. Written to a
file (stderr not a TTY) it is one plain line per run instead: an open outer bar would make
every inner bar move the cursor up (``\\x1b[A``) to redraw, which a log file keeps as debris.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunProgress:
    """``with RunProgress(n) as progress:``, then ``progress.start(label)`` as each run begins.
    Nothing is shown when ``enabled`` is false (other processes) or there are no runs."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.index = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.began = time.monotonic()
        tty = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, desc="runs", unit="run", position=0, leave=True,
                        file=self.stream, dynamic_ncols=True) if tty else None

    def start(self, label: str) -> None:
        """The next run, ``label``, begins (the one before it has ended)."""
        if not self.enabled:
            return
        if self.index and self.bar is not None:
            self.bar.update(1)
        self.index += 1
        text = f"run {self.index} of {self.total} ({label})"
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            elapsed = time.monotonic() - self.began
            done = self.index - 1
            eta = clock(elapsed / done * (self.total - done)) if done else "?"
            print(f"{text}: elapsed {clock(elapsed)}, ETA {eta}", file=self.stream, flush=True)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, kind, *exc) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.index - self.bar.n if kind is None else 0)
            self.bar.close()
        elif kind is None:
            print(f"{self.index} of {self.total} runs done in "
                  f"{clock(time.monotonic() - self.began)}", file=self.stream, flush=True)
