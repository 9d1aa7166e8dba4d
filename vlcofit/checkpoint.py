"""Checkpoints: written to a temporary folder and moved into place, so a killed run never
leaves a half-written checkpoint; loaded safely (safetensors, ``torch.load(weights_only=True)``).

Layout of ``<run>/checkpoints/step_000200/``: ``model.safetensors`` (weights),
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (fp16 only), ``rng_<rank>.pt`` (each
process's random state), ``state.json`` (step). ``<run>/checkpoints/latest`` names the newest.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from .errors import InputError

logger = logging.getLogger(__name__)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), meta[0], meta[1],
                         float(state["numpy_gauss"])))
    random.setstate((3, tuple(state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(accelerator, model: nn.Module, optimizer, scheduler, step: int, ckpt_root: Path,
         keep: int) -> Path:
    """Save a resumable checkpoint of ``step`` (collective: every process must call it)."""
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(ckpt_root / "latest", final.name)
        _prune(ckpt_root, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def resolve(path_or_run: str | Path) -> Path:
    """A checkpoint folder, or a run folder / its checkpoints folder (-> the latest checkpoint)."""
    path = Path(path_or_run)
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            path = root / latest.read_text().strip()
            break
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{path_or_run}: no checkpoint here (expected model.safetensors, or a run "
                         f"folder with checkpoints/latest)")
    return path


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """Load model weights (strict) from a checkpoint folder or a .safetensors file."""
    file = ckpt if ckpt.suffix == ".safetensors" else ckpt / "model.safetensors"
    missing, unexpected = load_model(model, str(file), strict=False)
    if missing or unexpected:
        raise InputError(f"{file}: weights do not fit this model (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); was it trained with another "
                         f"model config or label space?")


def load_matching(model: nn.Module, ckpt: Path) -> list[str]:
    """Initialise ``model`` from a checkpoint: tensors whose name and shape match are loaded;
    returns the names left at their initial values (e.g. a linear head of another label space)."""
    from safetensors.torch import load_file

    file = ckpt if ckpt.suffix == ".safetensors" else ckpt / "model.safetensors"
    saved = load_file(str(file))
    own = model.state_dict()
    take = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in take):
        raise InputError(f"{file}: no backbone weights fit this model (another model config?)")
    model.load_state_dict(take, strict=False)
    skipped = sorted(set(own) - set(take))
    if skipped:
        logger.warning("%s: %d tensors not loaded (kept their initial values): %s", file,
                       len(skipped), ", ".join(skipped[:5]))
    return skipped


def load(accelerator, model: nn.Module, optimizer, scheduler, ckpt: Path) -> int:
    """Restore everything :func:`save` wrote; returns the step to continue from."""
    load_weights(accelerator.unwrap_model(model), ckpt)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (ckpt / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=True))
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning("%s: no random state for process %d (world size changed?)", ckpt,
                       accelerator.process_index)
    return int(json.loads((ckpt / "state.json").read_text())["step"])
