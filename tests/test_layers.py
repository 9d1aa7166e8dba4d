"""The architecture holds: the import-linter contracts in .importlinter (each layer imports
only the layers below it; inference commands never import the training loop), no import circle
anywhere, no internal import hidden inside a function, each choice list declared once (a
``Literal`` in vlcofit.config.schema) and the registries that implement a choice agreeing with
it, and the public API resolving."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import grimp
import pytest

import vlcofit
from vlcofit.config import schema

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_are_kept():
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; "
                           "raise SystemExit(lint_imports())"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_no_import_circle():
    graph = grimp.build_graph("vlcofit")
    circles = []
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                circles.append((module, *back))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])


def test_no_internal_import_inside_a_function():
    found = []
    for path in sorted((ROOT / "vlcofit").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(fn)
                          if isinstance(node, ast.ImportFrom)
                          and (node.level or (node.module or "").startswith("vlcofit"))]
    assert not found, f"function-level imports of vlcofit modules: {found}"


def test_every_registry_implements_exactly_its_schema_choices():
    from vlcofit.data import annotations, captions
    from vlcofit.data.video import _MODULES
    from vlcofit.metrics import ava, retrieval
    from vlcofit.tasks import TASKS
    from vlcofit.train import trackers

    assert tuple(TASKS) == get_args(schema.Task)
    assert tuple(_MODULES) == get_args(schema.Decoder)
    assert tuple(ava.PROTOCOLS) == get_args(schema.AvaProtocol)
    assert tuple(retrieval.PROTOCOLS) == get_args(schema.RetrievalProtocol)
    assert tuple(trackers._INSTALL) == get_args(schema.Tracker)
    formats = set(annotations.FORMATS) | set(captions.FORMATS) | {"ava"}
    assert formats == set(get_args(schema.Format))


@pytest.mark.parametrize("name", sorted(vlcofit._API))
def test_public_api_names_resolve(name):
    assert getattr(vlcofit, name) is not None
    assert name in dir(vlcofit)
