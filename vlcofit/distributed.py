"""Process-group helpers shared by every entry point that may run under ``accelerate launch``."""
from __future__ import annotations

import torch.distributed as dist


def process_state():
    """Accelerate's process state, honouring ``ACCELERATE_USE_CPU`` as Accelerator does (a bare
    ``PartialState()`` ignores it and would set up a CPU run as a single process)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def end_processes() -> None:
    """Wait for every process, then destroy the process group.

    Call once, after a successful run. Left to interpreter shutdown, gloo's worker threads can
    outlive Python and abort the process ("terminate called without an active exception"), so a
    run that did all its work still exits non-zero now and then. Not called after an error: the
    barrier would wait for processes that may never arrive."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
