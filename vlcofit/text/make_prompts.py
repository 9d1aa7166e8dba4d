"""Regenerate the shipped prompt, template and split files from the published label lists.

    python -m vlcofit.text.make_prompts SRC_LABELS_DIR DST_PROMPTS_DIR

SRC_LABELS_DIR holds the published lists (see its README.md: kinetics*.txt, ucf101_camelcase.txt,
hmdb51.txt, ssv2.txt, ava_v2.2_*.txt, clip_prompts.md, base2novel/, k600_zeroshot_novel/).
Cleaning: UCF101 CamelCase takes CLIP's spelling (clip_prompts.md), HMDB51 snake_case becomes
words, Kinetics / SSv2 / AVA names are kept as published. Class order is always kept. Every
output is checked: prompt files parse, templates validate, every split name is in its dataset.
"""
from __future__ import annotations

import argparse
import ast
import csv
import logging
import re
import sys
from pathlib import Path
from typing import Callable

from ..errors import InputError, at
from .prompts import ClassList, canonical_name, check_template, parse_class_lines

logger = logging.getLogger(__name__)

# output prompt file -> (source file, name cleaner id)
PROMPT_SOURCES = {
    "kinetics400": ("kinetics400.txt", "asis"),
    "kinetics600": ("kinetics600.txt", "asis"),
    "kinetics700": ("kinetics700.txt", "asis"),
    "ucf101": ("ucf101_camelcase.txt", "ucf101"),
    "hmdb51": ("hmdb51.txt", "hmdb51"),
    "ssv2": ("ssv2.txt", "asis"),
}
AVA_SOURCES = {"ava_all80": "ava_v2.2_all80.txt", "ava_eval60": "ava_v2.2_eval60.txt"}
AVA_PBTXT = "ava_action_list_v2.1_for_activitynet_2018.pbtxt"
# output split file -> (source CSV, dataset whose prompt file it indexes)
SPLIT_SOURCES = {
    **{f"k600_novel_split{k}": (f"k600_zeroshot_novel/split{k}.csv", "kinetics600")
       for k in (1, 2, 3)},
    **{f"{ds}_{part}": (f"base2novel/{src}_{part}_labels.csv", ds)
       for ds, src in (("kinetics400", "kinetics_400"), ("hmdb51", "hmdb_51"),
                       ("ucf101", "ucf_101"), ("ssv2", "ssv2_174"))
       for part in ("base", "novel")},
}
# output template file -> CLIP section whose templates it copies, or literal templates
CLIP_TEMPLATES = {"clip_kinetics": ("Kinetics700", 28), "clip_ucf101": ("UCF101", 48)}
LITERAL_TEMPLATES = {"text4vis": ["a video of a person {}."], "simple": ["a video of {}."],
                     "bare": ["{}"]}


def split_camel_case(name: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"Apply Eye Makeup"``; ``"YoYo"`` -> ``"Yo Yo"``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)


def _key(name: str) -> str:
    return canonical_name(name).replace(" ", "")


def clip_section(markdown: str, title: str, source: str = "clip_prompts.md") -> dict[str, list]:
    """The ``classes`` / ``templates`` lists of one ``## title`` section of clip_prompts.md."""
    match = re.search(rf"^## {re.escape(title)}\s*\n+```\w*\n(.*?)^```", markdown, re.M | re.S)
    if match is None:
        raise InputError(f"{source}: no '## {title}' section with a code block")
    lists = {}
    for node in ast.parse(match.group(1)).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            lists[node.targets[0].id] = ast.literal_eval(node.value)
    return lists


def ucf101_cleaner(clip_names: list[str]) -> Callable[[str], str]:
    """Map a published UCF101 name (CamelCase) to CLIP's spelling of it, matched ignoring case
    and spaces (CLIP writes ``HandstandPushups`` as ``"Hand Stand Pushups"``); names CLIP lacks
    are split at case changes."""
    spelling = {_key(n): n for n in clip_names}
    return lambda name: spelling.get(_key(name), split_camel_case(name))


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{at(path)}: missing from the labels folder")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def _read_csv_names(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{at(path)}: missing from the labels folder")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0]] != ["id", "name"]:
        raise InputError(f"{at(path, 1)}: expected the header 'id,name'")
    return [row[1].strip() for row in rows[1:] if row]


def _lines(entries: list[str]) -> str:
    return "".join(f"{e}\n" for e in entries)


def _check_ava(classes: dict[str, ClassList], pbtxt: Path) -> None:
    """The 60 evaluated classes must carry the same names in all80, eval60 and the pbtxt."""
    all80, eval60 = classes["ava_all80"], classes["ava_eval60"]
    for class_id, name in zip(eval60.ids, eval60.names):
        other = all80.names[all80.id_to_index[class_id]] if class_id in all80.id_to_index else None
        if other != name:
            raise InputError(f"{eval60.path}: id {class_id} is {name!r} but {other!r} in all80")
    if pbtxt.is_file():
        items = re.findall(r'name:\s*"([^"]*)"\s*id:\s*(\d+)', pbtxt.read_text(encoding="utf-8"))
        if [(int(i), n) for n, i in items] != list(zip(eval60.ids, eval60.names)):
            raise InputError(f"{pbtxt}: label map differs from {eval60.path}")


def build(src: Path) -> dict[str, str]:
    """Every generated file: relative path under the prompts folder -> its text."""
    src = Path(src)
    markdown_path = src / "clip_prompts.md"
    if not markdown_path.is_file():
        raise InputError(f"{at(markdown_path)}: missing from the labels folder")
    markdown = markdown_path.read_text(encoding="utf-8")
    cleaners: dict[str, Callable[[str], str]] = {
        "asis": lambda n: n,
        "hmdb51": lambda n: " ".join(n.replace("_", " ").split()),
        "ucf101": ucf101_cleaner(clip_section(markdown, "UCF101")["classes"]),
    }
    files: dict[str, str] = {}
    classes: dict[str, ClassList] = {}
    for out, (source, cleaner) in PROMPT_SOURCES.items():
        names = [cleaners[cleaner](n) for n in _read_list(src / source)]
        files[f"{out}.txt"] = _lines(names)
        classes[out] = parse_class_lines(list(enumerate(names, 1)), f"{out}.txt (from {source})")
    for out, source in AVA_SOURCES.items():
        parsed = parse_class_lines(list(enumerate(_read_list(src / source), 1)), source)
        files[f"{out}.txt"] = _lines([f"{i}: {n}" for i, n in zip(parsed.ids, parsed.names)])
        classes[out] = parsed
    _check_ava(classes, src / AVA_PBTXT)
    for out, (source, dataset) in SPLIT_SOURCES.items():
        names = [cleaners[PROMPT_SOURCES[dataset][1]](n) for n in _read_csv_names(src / source)]
        lookup = {canonical_name(n) for n in classes[dataset].names}
        missing = [n for n in names if canonical_name(n) not in lookup]
        if missing:
            raise InputError(f"{source}: {len(missing)} names not in {dataset}: {missing[:5]}")
        files[f"splits/{out}.txt"] = _lines(names)
    for out, (title, count) in CLIP_TEMPLATES.items():
        templates = clip_section(markdown, title)["templates"]
        if len(templates) != count:
            raise InputError(f"clip_prompts.md: {title} has {len(templates)} templates, "
                             f"expected {count}")
        files[f"templates/{out}.txt"] = _lines(templates)
    for out, templates in LITERAL_TEMPLATES.items():
        files[f"templates/{out}.txt"] = _lines(templates)
    for rel, text in files.items():
        if rel.startswith("templates/"):
            for number, template in enumerate(text.splitlines(), 1):
                check_template(template, at(rel, number))
    return files


def write(files: dict[str, str], dst: Path) -> None:
    """Write ``files`` (from build) under ``dst``, creating sub-folders."""
    for rel, text in files.items():
        path = Path(dst) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlcofit.text.make_prompts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="folder of published label lists")
    parser.add_argument("dst", type=Path, help="prompts folder to write (e.g. prompts/)")
    args = parser.parse_args(argv)
    try:
        files = build(args.src)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write(files, args.dst)
    print(f"wrote {len(files)} files under {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
