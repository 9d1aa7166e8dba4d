"""Process-group helpers shared by every entry point that may run under ``accelerate launch``."""
from __future__ import annotations

import multiprocessing
from datetime import timedelta

import torch.distributed as dist

BOOTSTRAP_HINT = ("loader workers start from a fresh interpreter (forkserver or spawn, never "
                  "fork: vlcofit.data.loading) and import the main script again; put the "
                  "script's code under `if __name__ == \"__main__\":`")


def check_not_bootstrapping() -> None:
    """Refuse to start a run inside a worker that is still importing the parent's main script:
    a script that calls vlcofit at its top level would otherwise start a second run (and join
    the process group again) in every loader worker, and wait there forever."""

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(f"vlcofit was called while a worker process imports the main script: "
                           f"{BOOTSTRAP_HINT}")


def process_state(timeout: float | None = None):
    """Accelerate's process state, honouring ``ACCELERATE_USE_CPU`` as Accelerator does (a bare
    ``PartialState()`` ignores it and would set up a CPU run as a single process).
    ``timeout``: seconds a collective waits (``train.collective_timeout``); it takes effect only
    where this call starts the process group."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    check_not_bootstrapping()
    kwargs = {"timeout": timedelta(seconds=timeout)} if timeout is not None else {}
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **kwargs)


def collective_timeout_message(err: BaseException) -> str | None:
    """A clear message for a collective that timed out waiting for other processes (gloo
    raises a RuntimeError naming only a source file), or None for any other error."""
    text = str(err)
    if not (dist.is_available() and dist.is_initialized()) or "timed out" not in text.lower():
        return None
    return (f"rank {dist.get_rank()} of {dist.get_world_size()}: a collective operation timed "
            f"out waiting for the other processes (train.collective_timeout): one of them "
            f"stalled or died; its own log says which and why. ({text.strip()})")


def end_processes() -> None:
    """Wait for every process, then destroy the process group.

    Call once, after a successful run. Left to interpreter shutdown, gloo's worker threads can
    outlive Python and abort the process ("terminate called without an active exception"), so a
    run that did all its work still exits non-zero now and then. Not called after an error: the
    barrier would wait for processes that may never arrive."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
