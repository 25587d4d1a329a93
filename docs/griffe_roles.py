"""A griffe extension for the docs site: Sphinx roles in docstrings (``:func:`protect```,
``:class:`~imguard.models.ModelLoadError```) become cross-references (links where the target
is on a reference page, plain code where it is not), instead of literal role text; doctest
examples (``>>>`` lines) become Python code blocks instead of one run-on paragraph."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")


def _walk(obj: Any):
    yield obj
    for member in getattr(obj, "members", {}).values():
        if not getattr(member, "is_alias", False):
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        paths = {o.path for o in _walk(pkg)}

        def resolve(name: str, obj: Any) -> str | None:
            scopes = [obj, obj.parent, getattr(obj, "module", None), pkg]
            for scope in scopes:
                if scope is None:
                    continue
                cand = f"{scope.path}.{name}"
                if cand in paths:
                    return cand
                if name in getattr(scope, "members", {}):
                    return f"{scope.path}.{name}"
            if name in paths:
                return name
            return None

        for obj in _walk(pkg):
            doc = getattr(obj, "docstring", None)
            if doc is None or ":`" not in doc.value:
                continue

            def link(m: re.Match, obj: Any = obj) -> str:
                short, name = m.group(1), m.group(2)
                title = name.rsplit(".", 1)[-1] if short else name
                target = resolve(name, obj)
                if target is None:
                    return f"`{title}`"
                return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'

            doc.value = ROLE.sub(link, doc.value)

        for obj in _walk(pkg):
            doc = getattr(obj, "docstring", None)
            if doc is not None and ">>> " in doc.value:
                doc.value = _fence_examples(doc.value)


def _fence_examples(text: str) -> str:
    """Runs of ``>>>``/``...`` lines as fenced Python blocks (the prompts dropped)."""
    out: list[str] = []
    block: list[str] = []
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith(">>> ") or stripped == ">>>" or (block and stripped.startswith("... ")):
            block.append(stripped[4:])
            continue
        if block:
            out += ["", "```python", *block, "```", ""]
            block = []
        out.append(line)
    return "\n".join(out[:-1])
