"""Find shipped prompt files and configs by name, in a checkout or an installed wheel."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

_PKG = Path(__file__).resolve().parent.parent  # the vlcofit package
# In a wheel, prompts/ and configs/ are copied to vlcofit/_resources/; in a checkout or an
# editable install they sit at the repository top level.
_ROOTS = (_PKG / "_resources", _PKG.parent)

# kind -> (sub-folder, file suffix)
KINDS = {
    "prompts": ("prompts", ".txt"),
    "templates": ("prompts/templates", ".txt"),
    "splits": ("prompts/splits", ".txt"),
    "hierarchies": ("prompts/hierarchies", ".tsv"),  # coarse <-> fine maps (vlcofit.text.hierarchy)
    "datasets": ("configs/datasets", ".yaml"),
    "experiments": ("configs/experiments", ".yaml"),
    "models": ("configs/models", ".json"),
    "accelerate": ("configs/accelerate", ".yaml"),
}


def resource_dir(kind: str) -> Path:
    """The folder holding shipped resources of ``kind`` (see KINDS)."""
    sub, _ = KINDS[kind]
    for root in _ROOTS:
        if (root / sub).is_dir():
            return root / sub
    raise InputError(f"vlcofit's shipped {sub}/ folder was not found (broken install?)")


def list_resources(kind: str) -> list[str]:
    """Names of the shipped resources of ``kind``."""
    sub, suffix = KINDS[kind]
    try:
        folder = resource_dir(kind)
    except InputError:
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))


def find(kind: str, name_or_path: str | Path) -> Path:
    """Resolve a user-given path, or the name of a shipped resource, to an existing file.

    A value that names an existing file is used as is; otherwise it is looked up by name
    (with or without suffix) among the shipped resources of ``kind``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    sub, suffix = KINDS[kind]
    name = path.name[: -len(suffix)] if path.name.endswith(suffix) else path.name
    tried = [path.absolute()]
    if path.parent == Path("."):
        for root in _ROOTS:
            candidate = root / sub / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
            if (root / sub).is_dir():
                tried.append(candidate)
    relative = "" if path.is_absolute() else (
        "; a relative path is relative to the working directory, not to the file naming it")
    known = ", ".join(list_resources(kind)) or "none"
    raise InputError(f"{name_or_path}: no such file, and not a shipped {kind} name (looked for "
                     f"{', '.join(map(str, tried))}{relative}; shipped: {known})")
