"""The house stays readable: no definition over 60 lines in the entry to the engine (issue 17)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "imguard"
#: the API and the modules it was split into, the request, the engine and the methods
CHECKED = ("api.py", "pipeline.py", "progress.py", "model_sets.py", "request.py", "engine", "methods")
LIMIT = 60
#: definitions allowed over the limit, with their own ceiling. Protector is the public facade:
#: its class docstring and the signatures and docstrings of __init__, protect and protect_many
#: document every public argument (about half of its lines); each of its methods is under 60.
ALLOWED = {"api.py:Protector": 130}


def _definitions():
    for entry in CHECKED:
        path = SRC / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    yield f"{f.relative_to(SRC)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_definition_over_60_lines():
    found = dict(_definitions())
    assert set(ALLOWED) <= set(found), "an allowed definition is gone: drop it from ALLOWED"
    long = {name: n for name, n in found.items() if n > ALLOWED.get(name, LIMIT)}
    assert not long, f"definitions over {LIMIT} lines (split them): {long}"
