"""Unreadable training videos: skipped, counted, listed in ``bad_videos.txt``; a run fails only
past ``train.max_bad_fraction`` of any one dataset."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


class BadVideos:
    """The unreadable training videos of a run, per dataset.

    ``add`` records what this process's batches reported; ``sync`` (collective: at log steps,
    checkpoints and the end) merges every process's lists, writes the file and fails past the
    fraction on every process at once, so no process is left waiting for another that failed.
    (A bad video is replaced by the next readable one, so nothing fails between syncs.)
    """

    def __init__(self, path: Path, max_fraction: float, sizes: dict[str, int],
                 known: dict[str, list[str]] | None = None):
        self.path, self.max_fraction, self.sizes = path, max_fraction, sizes
        self.local: dict[str, set[str]] = {n: set() for n in sizes}
        self.known: dict[str, set[str]] = {n: set((known or {}).get(n, ())) for n in sizes}

    def add(self, name: str, paths: list[str]) -> None:
        self.local[name].update(paths)

    def total(self) -> int:
        """Distinct unreadable files (two datasets may share one)."""
        return len(set().union(*self.known.values()))

    def state(self) -> dict[str, list[str]]:
        """Everything known so far (for the checkpoint: a resumed run keeps its count)."""
        return {n: sorted(self.known[n] | self.local[n]) for n in self.sizes}

    def _write(self, lists: dict[str, list[str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(p + "\n" for p in sorted(set().union(*lists.values()))))
        os.replace(tmp, self.path)

    def _fail_past_fraction(self, lists: dict[str, list[str]]) -> None:
        for name, paths in lists.items():
            if len(paths) > self.max_fraction * self.sizes[name]:
                raise InputError(f"{len(paths)} of {self.sizes[name]} training videos of {name} "
                                 f"are unreadable, more than train.max_bad_fraction="
                                 f"{self.max_fraction}; see {self.path}")

    def sync(self, accelerator) -> None:
        """Collective: merge every process's lists, write them, fail past ``max_fraction``."""
        from accelerate.utils import gather_object
        local = {n: sorted(v) for n, v in self.local.items()}
        # gather_object, not gather_for_metrics: that one trims to an evaluation loader's
        # remainder when it is still the active loader
        for part in gather_object([local]):
            for name, paths in part.items():
                self.known[name].update(paths)
        lists = {n: sorted(v) for n, v in self.known.items()}
        if accelerator.is_main_process and self.total():
            self._write(lists)
        self._fail_past_fraction(lists)
