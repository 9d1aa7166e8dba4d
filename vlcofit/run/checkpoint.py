"""Checkpoints: written to a temporary folder and moved into place, so a killed run never
leaves a half-written checkpoint; loaded safely (safetensors, ``torch.load(weights_only=True)``).

The resumable state is Accelerate's own (``Accelerator.save_state`` / ``load_state``), so one
code path serves every strategy Accelerate runs (DDP; FSDP and DeepSpeed shard the model and
optimizer state their own way). Layout of ``<run>/checkpoints/step_000200/``:
``model.safetensors`` (the full weights, unsharded: what evaluation, ``predict`` and
``model.init_from`` read; under a sharding strategy gathered with
``Accelerator.get_state_dict``), Accelerate's ``optimizer.bin`` (or its sharded files),
``random_states_<rank>.pkl`` (each process's random state) and ``scaler.pt`` (fp16), and
vlcofit's ``scheduler.pt`` (the phase's schedule is rebuilt on resume, not prepared by
Accelerate) and ``state.json`` (step). ``<run>/checkpoints/latest`` names the newest.
Every file is checked (readable, safe, fitting the model) before Accelerate loads it, so a
corrupt one is named in a clear error.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file

from ..errors import InputError
from ..models.video import stored_shape
from ..utils.files import write_atomic

logger = logging.getLogger(__name__)

# What NumPy's pickled arrays need (Accelerate's random states; the same list Accelerate's own
# loader allows): array reconstruction, and bytes as protocol 2 pickles them
_NUMPY_GLOBALS = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
                  np.ndarray, np.dtype, codecs.encode,
                  *([np.dtypes.UInt32DType] if hasattr(np, "dtypes") else [])]


MODEL_FILE = "model.safetensors"
SCHEDULER_FILE = "scheduler.pt"
# Accelerate's file names (accelerate.utils.constants), named in errors and checks
OPTIMIZER_FILE = "optimizer.bin"
SCALER_FILE = "scaler.pt"
RNG_FILE = "random_states_{}.pkl"


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
    accelerator.save_state(str(tmp), safe_serialization=True)
    if not (tmp / MODEL_FILE).is_file():  # a sharding strategy saved shards: export the full model
        weights = accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed
        if accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / MODEL_FILE))
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(ckpt_root / "latest", final.name)
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
    take = {k: v.reshape(own[k].shape) for k, v in saved.items()
            if k in own and stored_shape(own[k].shape) == stored_shape(v.shape)}
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


def load_tensor_file(path: Path, mmap: bool = False) -> Any:
    """Read a ``torch.save`` file of tensors and plain containers (optimizer, scheduler, random
    state), safely: ``torch.load(weights_only=True)``; ``mmap``: tensors mapped, not read (a
    cheap check of a large file). A missing, truncated or corrupt file, or one that holds other
    objects (refused: unpickling them could run code), is an InputError naming the file.
    NumPy arrays (Accelerate's random states) are allowed, as Accelerate's own loader allows."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_NUMPY_GLOBALS):
            warnings.simplefilter("ignore", UserWarning)  # the pickle protocol of odd files
            return torch.load(path, weights_only=True, mmap=mmap and _is_zip(path))
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


def _is_zip(path: Path) -> bool:
    """torch.save's zip format (mmap needs it); a legacy or broken file is read plainly."""
    return path.is_file() and zipfile.is_zipfile(path)


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
    if (ckpt / "optimizer.pt").is_file() and not (ckpt / OPTIMIZER_FILE).exists():
        raise InputError(f"{ckpt}: written by an earlier vlcofit (optimizer.pt, rng_*.pt), whose "
                         f"training state this one cannot resume; start a new run from its "
                         f"weights instead: --set model.init_from={ckpt}")
    check_fits(accelerator.unwrap_model(model), ckpt / MODEL_FILE)
    # each file readable and safe before Accelerate reads it (a sharded optimizer is a folder)
    rng = ckpt / RNG_FILE.format(accelerator.process_index)
    for file in (ckpt / OPTIMIZER_FILE, ckpt / SCALER_FILE, rng):
        if file.is_file() or (file.name == SCALER_FILE and accelerator.scaler is not None):
            load_tensor_file(file, mmap=True)
    if not rng.is_file():
        logger.warning("%s: no random state for process %d (world size changed?)", ckpt,
                       accelerator.process_index)
    try:
        accelerator.load_state(str(ckpt), strict=True)
    except OSError as err:  # e.g. a sharded strategy's files missing
        raise InputError(f"{ckpt}: incomplete checkpoint ({err}); resume from another one") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise InputError(f"{ckpt}: its optimizer or scaler state does not fit this run's "
                         f"({type(err).__name__}: {err}); was the checkpoint written by another "
                         f"config?") from None
    _load_state(scheduler, ckpt / SCHEDULER_FILE)
    return step


def check_fits(model: nn.Module, file: Path) -> None:
    """``file``'s tensors have exactly ``model``'s names and shapes (read from its header)."""
    from safetensors import safe_open
    try:
        with safe_open(str(file), framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise _safetensors_error(file, err) from None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [k for k in own if k in saved and stored_shape(own[k]) != stored_shape(saved[k])]
    if missing or unexpected or shapes:
        detail = (f"shape of {shapes[0]}: {saved[shapes[0]]} saved, {own[shapes[0]]} here"
                  if shapes else f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise InputError(f"{file}: weights do not fit this model ({detail}); was it trained with "
                         f"another model config or label space?")


def _load_state(obj, file: Path) -> None:
    """``obj.load_state_dict`` from ``file``; a state of something else is an InputError."""
    state = load_tensor_file(file)
    try:
        obj.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise InputError(f"{file}: does not fit this run's {type(obj).__name__} "
                         f"({type(err).__name__}: {err}); was the checkpoint written by another "
                         f"config?") from None
