"""Coarse <-> fine label hierarchies (Mahdisoltani et al. 2018: task granularity).

A card's ``coarse`` file (a path, or a shipped name: ``prompts/hierarchies/<name>.tsv``) maps each fine class (of the card's ``prompts``) to a coarse group:
``fine name<TAB>coarse name`` lines, or a ``fine,coarse`` CSV (an optional ``fine,coarse``
header; the coarse name is everything after the last comma, so fine names may hold commas).
Names match as class names do everywhere (:func:`vlcofit.text.prompts.canonical_name`). The coarse
classes are ``coarse_prompts`` (a prompt file of the group names) when the card gives one, else
the map's group names in first-seen order; either way they are prompts of their own, embedded by
the text tower like any class name.

``granularity: coarse`` trains (and evaluates) the same videos at the coarse level: the
annotation still names fine classes, each record takes its group's label. A fine model also
reports coarse accuracy on the same videos, its fine predictions collapsed through the map
(a group scores as its best fine class, so the predicted group is the top fine class's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, at
from ..utils.resources import find
from .prompts import ClassList, canonical_name, read_class_list, read_lines


@dataclass(frozen=True)
class Hierarchy:
    """``fine_to_coarse[i]``: the coarse class index of fine class i."""
    fine: ClassList
    coarse: ClassList
    fine_to_coarse: tuple[int, ...]

    def collapse(self, scores: torch.Tensor) -> torch.Tensor:
        """Fine class scores [N, F] -> group scores [N, G]: each group's best fine class, so
        the top group is the group of the top fine prediction (the fine predictions collapsed
        through the map; a sum would let two middling classes outvote the best one)."""
        index = torch.tensor(self.fine_to_coarse, dtype=torch.long).expand_as(scores)
        out = scores.new_full((scores.shape[0], len(self.coarse)), float("-inf"))
        return out.scatter_reduce(1, index, scores, "amax")

    def coarse_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Fine labels [N] -> coarse labels [N]."""
        return torch.tensor(self.fine_to_coarse, dtype=torch.long)[labels]


def _split(text: str, where: str) -> tuple[str, str]:
    if "\t" in text:
        columns = text.split("\t")
        if len(columns) > 2:  # else the extra text would silently join the group's name
            raise InputError(f"{where}: {len(columns)} tab-separated columns, expected 2 "
                             f"('fine name<TAB>coarse name'), got {text!r}")
        fine, sep, coarse = columns[0], "\t", columns[-1]
    else:
        fine, sep, coarse = text.rpartition(",")
    if not sep or not fine.strip() or not coarse.strip():
        raise InputError(f"{where}: expected 'fine name<TAB>coarse name' (or fine,coarse), "
                         f"got {text!r}")
    return fine.strip(), coarse.strip()


def _map_lines(path) -> list[tuple[int, str, str, bool]]:
    """(line number, fine name, coarse name, CSV form?) of every mapping line; a fine,coarse
    header skipped."""
    out = []
    for number, text in read_lines(path):
        fine, coarse = _split(text, at(path, number))
        if number == 1 and (fine.lower(), coarse.lower()) == ("fine", "coarse"):
            continue
        out.append((number, fine, coarse, "\t" not in text))
    return out


def _coarse_list(card, pairs: list[tuple[int, str, str, bool]], path) -> ClassList:
    if card.coarse_prompts:
        return read_class_list(card.coarse_prompts)
    names = list(dict.fromkeys(coarse for _, _, coarse, _ in pairs))
    return ClassList.from_names(names, f"{path} (coarse groups)")


def _unknown_fine(where: str, name: str, fine: ClassList, csv: bool) -> InputError:
    """A fine name that is no class; a CSV line with a third column reads as one (the coarse
    name is after the last comma), so say so when the text before a comma is a class."""
    parts = name.split(",") if csv else [name]
    known = {canonical_name(n) for n in fine.names}
    for k in range(1, len(parts)):
        if canonical_name(",".join(parts[:k])) in known:
            return InputError(f"{where}: {len(parts) + 1} comma-separated columns, expected 2 "
                              f"(fine,coarse; the fine name {','.join(parts[:k])!r} is followed "
                              f"by {','.join(parts[k:])!r})")
    return InputError(f"{where}: {name!r} is not a class of {fine.path}")


def _check_groups_used(coarse: ClassList, mapping: dict[int, int], path) -> None:
    """A listed group no fine class maps to would be a class no video has (coarse_prompts)."""
    used = set(mapping.values())
    for g, name in enumerate(coarse.names):
        if g not in used:  # a prompt file's class i is its line i + 1 (no blank lines)
            raise InputError(f"{at(coarse.path, g + 1)}: coarse group {name!r} has no fine "
                             f"class mapped to it in {path}; map one to it, or remove it")


def read_hierarchy(card) -> Hierarchy:
    """The card's fine -> coarse map; unknown names (either side), a fine class mapped twice,
    a line of more than two columns, fine classes left unmapped or ``coarse_prompts`` groups
    no fine class maps to are InputErrors naming file and line."""
    path = find("hierarchies", card.coarse)
    fine = read_class_list(card.prompts)
    pairs = _map_lines(path)
    coarse = _coarse_list(card, pairs, path)
    fine_index = {canonical_name(n): i for i, n in enumerate(fine.names)}
    coarse_index = {canonical_name(n): i for i, n in enumerate(coarse.names)}
    mapping: dict[int, int] = {}
    first_line: dict[int, int] = {}
    for number, f, c, csv in pairs:
        where = at(path, number)
        if canonical_name(f) not in fine_index:
            raise _unknown_fine(where, f, fine, csv)
        if canonical_name(c) not in coarse_index:
            raise InputError(f"{where}: {c!r} is not a coarse group of {coarse.path}")
        i = fine_index[canonical_name(f)]
        if i in mapping:  # even to the same group: a repeat hides a typo or a stale line
            raise InputError(f"{where}: {f!r} is already mapped to "
                             f"{coarse.names[mapping[i]]!r} at line {first_line[i]}; map each fine "
                             "class once")
        mapping[i], first_line[i] = coarse_index[canonical_name(c)], number
    unmapped = [fine.names[i] for i in range(len(fine)) if i not in mapping]
    if unmapped:
        raise InputError(f"{path}: maps no coarse group for {len(unmapped)} fine class(es) of "
                         f"{fine.path}, e.g. {', '.join(map(repr, unmapped[:3]))}")
    if card.coarse_prompts:
        _check_groups_used(coarse, mapping, path)
    return Hierarchy(fine, coarse, tuple(mapping[i] for i in range(len(fine))))


def coarse_view(card) -> Hierarchy | None:
    """The map a fine model's evaluation also reports coarse accuracy through (None: none)."""
    return read_hierarchy(card) if card.coarse and card.granularity == "fine" else None
