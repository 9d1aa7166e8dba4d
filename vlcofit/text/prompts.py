"""Prompt (class-name) files, template files, class-subset files and the label-space union.

File formats (see prompts/README.md):

- Prompt file ``prompts/<dataset>.txt``: one class name per line, line i = class index i - 1;
  or every line is ``N: name`` (the AVA label-map text form) and the class ids are the given N.
- Template file ``prompts/templates/<name>.txt``: one template per line, each with exactly one
  ``{}`` (literal braces are written ``{{`` / ``}}``).
- Split file ``prompts/splits/<name>.txt``: one class name per line, or a CSV with the header
  ``id,name`` (the published base-to-novel / K600 split form; its ids are ignored).

Lines are stripped; empty lines at the end of a file are ignored, an empty line anywhere else is
an error (it would shift class indices). There is no comment syntax: ``#`` is part of a name.
"""
from __future__ import annotations

import csv
import difflib
import logging
import re
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..errors import InputError, at
from ..utils.files import read_text
from ..utils.resources import find

logger = logging.getLogger(__name__)

_ID_LINE = re.compile(r"^(\d+)\s*:\s*(\S.*)$")
_CSV_HEADER = "id,name"


def canonical_name(name: str) -> str:
    """The key used to match class names across files: lowercase, '_' -> ' ', whitespace collapsed.

    Punctuation such as '/', '(' and ')' is kept: ``"Brush_Hair "`` -> ``"brush hair"``.
    """
    return " ".join(name.replace("_", " ").lower().split())


def _loose_key(name: str) -> str:
    """canonical_name without spaces, so published CamelCase ("JumpRope") meets "Jump Rope"."""
    return canonical_name(name).replace(" ", "")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the file's lines, trailing empty lines dropped.

    Raises InputError for an unreadable, empty or non-UTF-8 file, or an empty line before the end.
    """
    text = read_text(path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError(f"{at(path)}: file is empty")
    for number, line in enumerate(lines, start=1):
        if not line:
            raise InputError(f"{at(path, number)}: empty line before the end of the file "
                             "(it would shift the following entries; remove it)")
    return list(enumerate(lines, start=1))


@dataclass(frozen=True)
class ClassList:
    """A dataset's classes: ``names[i]`` is class index i, ``ids[i]`` its id in annotation files.

    For a plain prompt file ids equal indices (0..n-1); for an ``N: name`` file they are the N.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    path: str

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ids):
            raise InputError(f"{self.path}: {len(self.names)} names but {len(self.ids)} ids")
        _check_unique(self.names, self.ids, self.path)

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...], path: str = "<names>") -> ClassList:
        """A class list from names in memory (ids = indices), e.g. for ad-hoc zero-shot scoring."""
        return cls(tuple(str(n).strip() for n in names), tuple(range(len(names))), path)

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def id_to_index(self) -> Mapping[int, int]:
        """Class id (as in annotation files) -> class index (row in this list)."""
        return MappingProxyType({class_id: i for i, class_id in enumerate(self.ids)})

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return {canonical_name(n): i for i, n in enumerate(self.names)}

    @cached_property
    def _by_loose_key(self) -> dict[str, int | None]:
        # None marks a key two classes share: such a key must not resolve to either.
        keys: dict[str, int | None] = {}
        for i, n in enumerate(self.names):
            key = _loose_key(n)
            keys[key] = None if key in keys else i
        return keys

    def find_index(self, name_or_id: str | int) -> int | None:
        """Index of a class given by name or id, or None. See index_of."""
        if isinstance(name_or_id, bool):
            return None
        if isinstance(name_or_id, int):
            return self.id_to_index.get(name_or_id)
        text = str(name_or_id)
        index = self._by_name.get(canonical_name(text))
        if index is None:
            index = self._by_loose_key.get(_loose_key(text))
        if index is None and text.strip().isdigit():
            index = self.id_to_index.get(int(text))
        return index

    def index_of(self, name_or_id: str | int) -> int:
        """Index of a class given by name, or by id (an int, or a str of digits).

        Names match by canonical_name; failing that, ignoring spaces too when that is unambiguous
        (so the published CamelCase ``"JumpRope"`` finds ``"Jump Rope"``). For plain lists an id
        is the 0-based index; for ``N: name`` lists it is N. Raises InputError when unknown,
        listing close names.
        """
        index = self.find_index(name_or_id)
        if index is None:
            raise InputError(f"{self.path}: unknown class {name_or_id!r}"
                             f"{self._suggest(name_or_id)}")
        return index

    def _suggest(self, name_or_id: str | int) -> str:
        close = difflib.get_close_matches(canonical_name(str(name_or_id)), list(self._by_name), n=4)
        if not close:
            return f" ({len(self)} classes)"
        return "; close names: " + ", ".join(repr(self.names[self._by_name[c]]) for c in close)


def _check_unique(names: tuple[str, ...], ids: tuple[int, ...], path: str) -> None:
    """Raise InputError naming both lines if two names (canonicalised) or two ids coincide.

    Entry i is reported as line i + 1, which is its line in a prompt file (no blank lines).
    """
    seen_names: dict[str, int] = {}
    seen_ids: dict[int, int] = {}
    for line, (name, class_id) in enumerate(zip(names, ids), start=1):
        if not name:
            raise InputError(f"{at(path, line)}: empty class name")
        key = canonical_name(name)
        if key in seen_names:
            raise InputError(f"{at(path, line)}: duplicate class name {name!r} "
                             f"(same as line {seen_names[key]} after canonicalisation)")
        if class_id in seen_ids:
            raise InputError(f"{at(path, line)}: duplicate class id {class_id} "
                             f"(also on line {seen_ids[class_id]})")
        seen_names[key] = line
        seen_ids[class_id] = line


def parse_class_lines(lines: list[tuple[int, str]], path: str | Path) -> ClassList:
    """A ClassList from (line number, text) pairs, all plain names or all ``N: name``."""
    if not lines:
        raise InputError(f"{at(path)}: file is empty")
    id_form = _ID_LINE.match(lines[0][1]) is not None
    names: list[str] = []
    ids: list[int] = []
    for number, text in lines:
        match = _ID_LINE.match(text)
        if (match is not None) != id_form:
            first = "'N: name'" if id_form else "plain names"
            raise InputError(f"{at(path, number)}: mixed forms: line 1 uses {first} but this line "
                             f"is {text!r}; use one form for the whole file")
        if match:
            ids.append(int(match.group(1)))
            names.append(match.group(2).strip())
        else:
            ids.append(len(ids))
            names.append(text)
    # ClassList checks uniqueness; its positions are line numbers as no blank line can precede.
    return ClassList(tuple(names), tuple(ids), str(path))


def read_class_list(name_or_path: str | Path) -> ClassList:
    """Read a prompt file: a shipped name (``"kinetics400"``) or a path."""
    path = find("prompts", name_or_path)
    classes = parse_class_lines(read_lines(path), path)
    logger.debug("read %d classes from %s", len(classes), path)
    return classes


def check_template(template: str, where: str) -> str:
    """Return ``template`` if it has exactly one bare ``{}``; else raise InputError at ``where``."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(f"{where}: malformed braces in template {template!r} ({err}); "
                         "write literal braces as '{{' and '}}'") from None
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    if len(fields) != 1:
        raise InputError(f"{where}: template {template!r} has {len(fields)} '{{}}' fields; "
                         "it needs exactly one")
    if fields[0] != ("", "", None):
        raise InputError(f"{where}: template {template!r} must use a bare '{{}}' "
                         "(no field name, index, conversion or format spec)")
    return template


def read_templates(name_or_path: str | Path) -> tuple[str, ...]:
    """Read a template file: a shipped name (``"clip_kinetics"``) or a path."""
    path = find("templates", name_or_path)
    seen: dict[str, int] = {}
    templates: list[str] = []
    for number, text in read_lines(path):
        templates.append(check_template(text, at(path, number)))
        if text in seen:
            raise InputError(f"{at(path, number)}: duplicate template (also on line {seen[text]})")
        seen[text] = number
    return tuple(templates)


def _split_names(path: Path) -> list[tuple[int, str]]:
    """(line number, class name) of a split file, plain or ``id,name`` CSV."""
    lines = read_lines(path)
    if lines[0][1].replace(" ", "").lower() != _CSV_HEADER:
        return lines
    names = []
    for number, text in lines[1:]:
        row = next(csv.reader([text]))
        if len(row) != 2 or not row[1].strip():
            raise InputError(f"{at(path, number)}: expected 'id,name', got {text!r}")
        names.append((number, row[1].strip()))
    if not names:
        raise InputError(f"{at(path)}: no classes after the 'id,name' header")
    return names


def read_class_subset(name_or_path: str | Path, classes: ClassList) -> list[int]:
    """Indices in ``classes`` of the classes a split file names, in file order.

    ``name_or_path`` is a shipped split name (``"ucf101_novel"``) or a path. Unknown or repeated
    names raise InputError naming the file and line.
    """
    path = find("splits", name_or_path)
    indices: list[int] = []
    seen: dict[int, int] = {}
    for number, name in _split_names(path):
        index = classes.find_index(name)
        if index is None:
            raise InputError(f"{at(path, number)}: class {name!r} is not in {classes.path}"
                             f"{classes._suggest(name)}")
        if index in seen:
            raise InputError(f"{at(path, number)}: class {name!r} repeated (line {seen[index]})")
        seen[index] = number
        indices.append(index)
    return indices


def read_label_map(spec: str) -> dict[str, str]:
    """``--label-map``: a file of ``old=new`` lines (blank and ``#`` lines skipped) or
    comma-separated ``old=new`` pairs -> {old: new}."""
    path = Path(spec).expanduser()
    if path.is_file():
        text = read_text(path, "label map")
        items = [(at(path, n), line.strip()) for n, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.strip().startswith("#")]
    else:
        items = [(f"--label-map {spec!r}", t.strip()) for t in spec.split(",") if t.strip()]
    mapping: dict[str, str] = {}
    for where, item in items:
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise InputError(f"{where}: {item!r} is not old=new (give a file of old=new lines "
                             "or comma-separated old=new pairs)")
        if old in mapping:
            raise InputError(f"{where}: {old!r} is renamed twice")
        mapping[old] = new
    if not mapping:
        raise InputError(f"--label-map {spec!r}: no old=new pair")
    return mapping


def renamed_classes(classes: ClassList, mapping: Mapping[str, str], where: str) -> ClassList:
    """``classes`` (the new prompt file) with each class a label map renames to written under
    its old name, at the same index and id: labels in the old names then read as new classes."""
    old_of: dict[int, str] = {}
    for old, new in mapping.items():
        index = classes.find_index(new)
        if index is None:
            raise InputError(f"{where}: {old}={new}: {new!r} is not in the prompt file "
                             f"{classes.path}{classes._suggest(new)}")
        if index in old_of:
            raise InputError(f"{where}: {old_of[index]!r} and {old!r} are both renamed to "
                             f"{classes.names[index]!r}")
        old_of[index] = old
    names = tuple(old_of.get(i, name) for i, name in enumerate(classes.names))
    return ClassList(names, classes.ids, f"{classes.path} renamed by {where}")


@dataclass(frozen=True)
class LabelSpace:
    """The union of several datasets' classes: one row per distinct (canonical) class name.

    ``names[r]`` is row r (the first spelling seen); ``index[dataset][i]`` is the row of that
    dataset's class index i.
    """

    names: tuple[str, ...]
    index: dict[str, tuple[int, ...]] = field(hash=False)

    @classmethod
    def union(cls, lists: Mapping[str, ClassList]) -> LabelSpace:
        """Union in first-seen order: datasets in the given order, then each file's line order."""
        rows: dict[str, int] = {}
        names: list[str] = []
        index: dict[str, tuple[int, ...]] = {}
        for dataset, classes in lists.items():
            mapping = []
            for name in classes.names:
                key = canonical_name(name)
                if key not in rows:
                    rows[key] = len(names)
                    names.append(name)
                mapping.append(rows[key])
            index[dataset] = tuple(mapping)
        shared = sum(len(c) for c in lists.values()) - len(names)
        logger.info("label space: %d rows from %d datasets (%d shared)", len(names), len(lists),
                    shared)
        return cls(tuple(names), index)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, dataset: str) -> tuple[int, ...]:
        """Rows of ``dataset``'s classes, in its class-index order."""
        if dataset not in self.index:
            raise InputError(f"dataset {dataset!r} is not in the label space "
                             f"(has: {', '.join(self.index)})")
        return self.index[dataset]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for a run folder: ``{"names": [...], "index": {dataset: [...]}}``."""
        return {"names": list(self.names),
                "index": {ds: list(rows) for ds, rows in self.index.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LabelSpace:
        """Inverse of to_dict."""
        try:
            names = tuple(str(n) for n in data["names"])  # type: ignore[union-attr]
            index = {str(ds): tuple(int(r) for r in rows)
                     for ds, rows in data["index"].items()}  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"label space: malformed saved form ({err!r})") from None
        for ds, rows in index.items():
            if any(not 0 <= r < len(names) for r in rows):
                raise InputError(f"label space: dataset {ds!r} has a row outside "
                                 f"0..{len(names) - 1}")
        return cls(names, index)
