"""DataLoaders that cannot deadlock on a decoder's threads, and that turn a stall into an error.

Workers start from a fresh interpreter (the ``forkserver`` context; ``spawn`` where there is
none), never as a fork of a process that has decoded. A forked child inherits a copy of every
library's state but none of its threads: FFmpeg 8's swscale (PyAV 18) keeps slice threads
after the parent's first ``to_ndarray``, and a forked worker that converts a frame then waits
forever on them. No decoder (PyAV, torchcodec, decord, pytorchvideo) can do that to a worker
that was never forked from the parent. The fork server starts once per process; persistent
workers start once per loader.

A loader that yields no batch for ``data.stall_timeout`` seconds raises :class:`StallError`
naming the phase, the dataset, and what each worker was reading (:class:`Tracked` records the
item in progress in shared memory, which the main process reads when the wait runs out).
"""
from __future__ import annotations

import faulthandler
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..config.schema import DataConfig
from ..errors import InputError
from ..utils.distributed import BOOTSTRAP_HINT, check_not_bootstrapping
from .sampling import EpochBatches

IDLE = -1
# Imported once by the fork server, not by every worker it starts: the main script (as
# multiprocessing's default; under its `if __name__ == "__main__":` guard only its imports run)
# and what unpickling a task's dataset and collate function needs.
_PRELOAD = ["__main__", "vlcofit.data", "vlcofit.tasks"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of every loader worker: a fork server (Linux), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # no effect once this process's server runs
        return ctx
    return multiprocessing.get_context("spawn")


class StallError(InputError, RuntimeError):
    """A loader yielded no batch within ``data.stall_timeout`` seconds."""


class Tracked(Dataset):
    """``dataset`` whose workers record the item each is reading (shared memory), so that a
    stall can name the video. Attributes not defined here are the wrapped dataset's."""

    def __init__(self, dataset, num_workers: int, stall_timeout: float) -> None:
        self.dataset, self.stall_timeout, self.num_workers = dataset, stall_timeout, num_workers
        # per worker: the item in progress (IDLE: none) and the worker's pid
        self.reading = torch.full((max(num_workers, 1), 2), IDLE,
                                  dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        info = torch.utils.data.get_worker_info()
        slot = self.reading[info.id if info is not None else 0]
        slot[1] = os.getpid()
        slot[0] = i
        try:
            return self.dataset[i]
        finally:
            slot[0] = IDLE

    def __getattr__(self, name: str) -> Any:
        # not yet set while unpickling: no recursion through self.dataset
        if name in ("dataset", "reading", "stall_timeout", "num_workers"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def describe(self, index: int) -> str:
        """What item ``index`` reads: its video path where the dataset says (``source``)."""
        source = getattr(self.dataset, "source", None)
        try:
            return f"{source(index)} (item {index})" if source else f"item {index}"
        except Exception:  # a description must not hide the stall it describes
            return f"item {index}"


class ExitWithParent:
    """``worker_init_fn``: end the worker when the process that made the loader dies.

    torch's workers watch their parent process, which for a fork-server worker is the fork
    server, not the loader's process; and the fork server lives while any worker does. A
    killed run (SIGKILL, or SIGTERM without cleanup) would leave both behind for good."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __call__(self, worker_id: int) -> None:
        # a spawned worker's parent is the loader's process, which torch watches itself
        if os.getppid() != self.pid:
            threading.Thread(target=_exit_when_gone, args=(self.pid,), daemon=True,
                             name="vlcofit-parent-watch").start()


def _exit_when_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    while True:
        if fd is not None:
            select.select([fd], [], [])
            break
        time.sleep(2.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:  # alive, another user's
            pass
    os._exit(1)


def make_loader(dataset, *, num_workers: int, stall_timeout: float, collate_fn: Callable,
                batch_size: int | None = None, batch_sampler=None) -> DataLoader:
    """A DataLoader over ``Tracked(dataset)``: fork-safe workers (persistent: started once),
    ``stall_timeout`` seconds for each batch (see :func:`watch`)."""
    check_not_bootstrapping()
    if stall_timeout <= 0:
        raise InputError(f"data.stall_timeout must be > 0 seconds, got {stall_timeout}")
    workers = dict(num_workers=num_workers, multiprocessing_context=worker_context(),
                   persistent_workers=True, timeout=stall_timeout,
                   worker_init_fn=ExitWithParent(os.getpid())) if num_workers else {}
    kwargs = (dict(batch_sampler=batch_sampler) if batch_sampler is not None
              else dict(batch_size=batch_size, shuffle=False))
    return DataLoader(Tracked(dataset, num_workers, stall_timeout), collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available(), **kwargs, **workers)


def watch(loader: Iterable, phase: str) -> Iterator:
    """``loader``'s batches; a wait past the stall timeout raises :class:`StallError`
    (a loader not made by :func:`make_loader` is iterated as it is).

    With workers, DataLoader's own ``timeout`` ends the wait. Without, the main process reads
    the items itself and a watchdog thread ends it: it interrupts the main thread and, if that
    is stuck in native code, dumps every thread's stack and exits the process (status 70)."""
    inner = _tracked(loader)
    if inner is None or getattr(loader, "num_workers", 0):
        try:
            yield from loader
        except RuntimeError as err:
            if inner is not None and "exited unexpectedly" in str(err):
                raise RuntimeError(f"{phase}: {err}; its own error is printed above. Killed for "
                                   f"memory (fewer train.num_workers)? Or {BOOTSTRAP_HINT}"
                                   ) from err
            if "timed out" not in str(err) or inner is None:
                raise
            raise StallError(stall_message(inner, phase)) from None
        return
    yield from _watched_in_process(loader, inner, phase)


def _watched_in_process(loader, inner: Tracked, phase: str) -> Iterator:
    dog = _Watchdog(inner.stall_timeout, lambda: stall_message(inner, phase))
    it = iter(loader)
    try:
        while True:
            dog.arm()
            try:
                batch = next(it)
            except StopIteration:
                return
            except KeyboardInterrupt:
                if dog.fired:
                    raise StallError(dog.message) from None
                raise
            finally:
                dog.disarm()
            yield batch
    finally:
        dog.stop()


class _Watchdog:
    """A thread that, ``timeout`` s after ``arm`` without ``disarm``, interrupts the main
    thread; ``timeout`` s later still (stuck in native code), it dumps stacks and exits."""

    def __init__(self, timeout: float, describe: Callable[[], str]) -> None:
        self.timeout, self.describe = timeout, describe
        self.fired, self.message = False, ""
        self._armed = threading.Event()
        self._idle = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="vlcofit-stall-watch")
        self._thread.start()

    def arm(self) -> None:
        self._idle.clear()
        self._armed.set()

    def disarm(self) -> None:
        self._armed.clear()
        self._idle.set()

    def stop(self) -> None:
        self._stopped = True
        self.disarm()
        self._armed.set()  # wake the thread so it can see _stopped

    def _run(self) -> None:
        while self._armed.wait() and not self._stopped:
            if self._idle.wait(self.timeout) or self._stopped:
                continue
            try:
                self.message = self.describe()
            except Exception as err:  # still end the stall, with what is known
                self.message = f"a loader yielded no batch for {self.timeout:g} s ({err!r})"
            self.fired = True
            # a real SIGINT, unlike _thread.interrupt_main(), also ends a blocking sleep or wait
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            if self._idle.wait(self.timeout) or self._stopped:
                return
            print(f"vlcofit: error: {self.message}\n(the main thread is stuck in native code; "
                  f"stacks of every thread follow)", file=sys.stderr, flush=True)
            faulthandler.dump_traceback(all_threads=True)
            os._exit(70)


def _tracked(loader) -> Tracked | None:
    dataset = getattr(loader, "dataset", None)
    return dataset if isinstance(dataset, Tracked) else None


def stall_message(inner: Tracked, phase: str) -> str:
    """What stalled: the phase, the dataset, and each worker's item in progress."""
    card = getattr(inner.dataset, "card", None)
    name = getattr(card, "name", type(inner.dataset).__name__)
    busy = [f"{f'worker {w}' if inner.num_workers else 'the main process'} (pid {pid}) was "
            f"reading {inner.describe(i)}"
            for w, (i, pid) in enumerate(inner.reading.tolist()) if i != IDLE]
    what = "; ".join(busy) if busy else "no worker was inside an item (collation or start-up)"
    return (f"{phase} stalled: dataset {name!r} yielded no batch for {inner.stall_timeout:g} s "
            f"(data.stall_timeout). {what}. A stack dump of a stuck process: "
            f"`py-spy dump --pid PID` (pip install py-spy), or rerun with "
            f"PYTHONFAULTHANDLER=1 and `kill -ABRT PID`; slow storage: raise data.stall_timeout")


def build_loader(dataset, batch_size: int, train: bool, num_workers: int,
                 stall_timeout: float = DataConfig.stall_timeout) -> DataLoader:
    """Evaluation: the records in order, the last batch partial. Training: endless seeded epochs
    (:class:`~vlcofit.data.sampling.EpochBatches`, one iterator for the whole run), seeded from
    torch's initial seed (``train.seed``), as Accelerate's seedable sampler was. Workers are
    fork-safe and a stall is an error (:mod:`vlcofit.data.loading`)."""
    common = dict(num_workers=num_workers, stall_timeout=stall_timeout,
                  collate_fn=dataset.collate)
    if not train:
        return make_loader(dataset, batch_size=batch_size, **common)
    sampler = EpochBatches(len(dataset), batch_size, torch.random.initial_seed())
    return make_loader(dataset, batch_sampler=sampler, **common)
