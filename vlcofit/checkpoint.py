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
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
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
         keep: int, extra: dict | None = None) -> Path:
    """Save a resumable checkpoint of ``step`` (collective: every process must call it);
    ``extra`` (JSON) goes into ``state.json`` beside the step."""
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
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
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
            try:
                name = latest.read_text().strip()
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"{latest}: cannot read the name of the latest checkpoint "
                                 f"({getattr(err, 'strerror', None) or err})") from None
            path = root / name
            if not name or not (path / "model.safetensors").is_file():
                raise InputError(f"{latest}: names {name!r}, which is not a checkpoint folder under "
                                 f"{root} (corrupt pointer? pass a checkpoint folder instead)")
            break
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{path_or_run}: no checkpoint here (expected model.safetensors, or a run "
                         f"folder with checkpoints/latest)")
    _check_safetensors(path / "model.safetensors")
    return path


def _check_safetensors(file: Path) -> None:
    """Read the header of a .safetensors file (cheap): a truncated or foreign file is an
    InputError naming it, before anything is built to load it into."""
    from safetensors import safe_open
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise _safetensors_error(file, err) from None


def _safetensors_error(file: Path, err: Exception) -> InputError:
    return InputError(f"{file}: not a readable safetensors file, corrupt or truncated ({err}); "
                      f"use another checkpoint")


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """Load model weights (strict) from a checkpoint folder or a .safetensors file."""
    file = ckpt if ckpt.suffix == ".safetensors" else ckpt / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except (SafetensorError, OSError) as err:
        raise _safetensors_error(file, err) from None
    except RuntimeError as err:  # load_state_dict: shapes differ
        first = str(err).strip().splitlines()[-1].strip()
        raise InputError(f"{file}: weights do not fit this model ({first}); was it trained with "
                         f"another model config or label space?") from None
    if missing or unexpected:
        raise InputError(f"{file}: weights do not fit this model (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); was it trained with another "
                         f"model config or label space?")


def load_matching(model: nn.Module, ckpt: Path) -> list[str]:
    """Initialise ``model`` from a checkpoint: tensors whose name and shape match are loaded;
    returns the names left at their initial values (e.g. a linear head of another label space)."""
    from safetensors.torch import load_file

    file = ckpt if ckpt.suffix == ".safetensors" else ckpt / "model.safetensors"
    try:
        saved = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise _safetensors_error(file, err) from None
    own = model.state_dict()
    take = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in take):
        raise InputError(f"{file}: no backbone weights fit this model (another model config?)")
    model.load_state_dict(take, strict=False)
    if hasattr(model, "mark_loaded"):  # these are the run's starting weights now
        model.mark_loaded(take)
    skipped = sorted(set(own) - set(take))
    if skipped:
        logger.warning("%s: %d tensors not loaded (kept their initial values): %s", file,
                       len(skipped), ", ".join(skipped[:5]))
    return skipped


def load_tensor_file(path: Path) -> Any:
    """Read a ``torch.save`` file of tensors and plain containers (optimizer, scheduler, random
    state), safely: ``torch.load(weights_only=True)``. A missing, truncated or corrupt file, or
    one that holds other objects (refused: unpickling them could run code), is an InputError
    naming the file."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of odd files
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, weights_only=True)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found or "Unsupported global" in str(err):
            what = f" ({found.group(1)})" if found else ""
            raise InputError(f"{path}: refused: the file holds objects other than tensors and plain "
                             f"containers{what}, which could run code when loaded. vlcofit never "
                             f"writes such files: is it from another program, or tampered with? "
                             f"Resume from another checkpoint.") from None
        raise InputError(f"{path}: corrupt or truncated, or not a tensor file written by "
                         f"torch.save; resume from another checkpoint") from None
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, TypeError,
            AttributeError) as err:
        # what torch raises for a truncated zip archive (RuntimeError), an empty file (EOFError)
        # or bytes that are no pickle at all (KeyError, ValueError, ...)
        reason = str(err).split(". ")[0].strip() if isinstance(err, RuntimeError) else ""
        reason = "" if "weights_only" in reason else f" ({reason})" if reason else ""
        raise InputError(f"{path}: corrupt or truncated, or not a tensor file written by "
                         f"torch.save{reason}; resume from another checkpoint") from None


def _read_step(ckpt: Path) -> int:
    """The step a checkpoint's ``state.json`` records."""
    file = ckpt / "state.json"
    try:
        step = json.loads(file.read_text())["step"]
    except OSError as err:
        raise InputError(f"{file}: cannot read ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise InputError(f"{file}: corrupt checkpoint state, expected {{\"step\": N}} "
                         f"({type(err).__name__}: {err})") from None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InputError(f"{file}: corrupt checkpoint state: step must be an integer >= 0, "
                         f"got {step!r}")
    return step


def read_state(ckpt: Path) -> dict:
    """A checkpoint's ``state.json``: ``{"step": N}`` plus what the trainer added
    (training phase, unreadable videos so far)."""
    step = _read_step(ckpt)
    return {**json.loads((ckpt / "state.json").read_text()), "step": step}


def load(accelerator, model: nn.Module, optimizer, scheduler, ckpt: Path) -> int:
    """Restore everything :func:`save` wrote; returns the step to continue from."""
    step = _read_step(ckpt)
    load_weights(accelerator.unwrap_model(model), ckpt)
    _load_state(optimizer, ckpt / "optimizer.pt")
    _load_state(scheduler, ckpt / "scheduler.pt")
    if accelerator.scaler is not None and (ckpt / "scaler.pt").is_file():
        _load_state(accelerator.scaler, ckpt / "scaler.pt")
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        state = load_tensor_file(rng_file)
        try:
            set_rng_state(state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise InputError(f"{rng_file}: not a random state saved by vlcofit "
                             f"({type(err).__name__}: {err})") from None
    else:
        logger.warning("%s: no random state for process %d (world size changed?)", ckpt,
                       accelerator.process_index)
    return step


def _load_state(obj, file: Path) -> None:
    """``obj.load_state_dict`` from ``file``; a state of something else is an InputError."""
    state = load_tensor_file(file)
    try:
        obj.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise InputError(f"{file}: does not fit this run's {type(obj).__name__} "
                         f"({type(err).__name__}: {err}); was the checkpoint written by another "
                         f"config?") from None
