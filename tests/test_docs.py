"""The README stays true: its defaults table matches the registry, CI runs its command."""

import re
from pathlib import Path

import imguard

ROOT = Path(__file__).resolve().parents[1]


def test_readme_defaults_table_matches_registry():
    text = (ROOT / "README.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \| (min|max) \|.*$", text, re.M)}
    info = imguard.methods()
    assert set(rows) == set(info)
    for name, m in info.items():
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        d = m["defaults"]
        assert cells[1] == ("max" if m["maximize"] else "min"), name
        assert float(cells[2]) == d["eps"] and float(cells[3]) == d["step_size"] and int(cells[4]) == d["steps"], name
        assert cells[5] == d["schedule"] and cells[6] == d["optimizer"], name


def test_ci_runs_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "setup-and-test" in ci
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- setup-and-test")[1].split("```bash")[1].split("```")[0].strip().splitlines()
    assert "pytest" in block[0] and "pip install" in block[0]
    # the main job: the default protection (no --method: the medium preset) of the bundled sample
    # portrait, so it works in a clone with no ../shared beside it
    assert block[1].startswith(".venv/bin/imguard protect --example") and "-o out" in block[1]
    assert "--method" not in block[1] and "--strength" not in block[1]


def test_ci_installs_the_browser_before_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text()
    apt = 'if [ "${CI:-}" = true ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; fi'
    assert apt in ci and ci.index(apt) < ci.index('bash -c "$cmd"')


def test_strength_page_matches_the_presets():
    from imguard.presets import PRESETS

    text = (ROOT / "docs" / "guide" / "strength.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)`.*$", text, re.M)}
    assert set(rows) == set(PRESETS)
    for name, p in PRESETS.items():
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert float(cells[1]) == p.options["eps"] and int(cells[2]) == p.options["steps"], name
        assert [s.strip() for s in cells[3].split(",")] == p.face_model.split(","), name
        assert [s.strip() for s in cells[4].split(",")] == p.vae.split(","), name


def test_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (mkdocs, material and mkdocstrings are in the dev extra)."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "ProtectionResult" in api and "initial_objective" in api  # generated from the docstrings
    for page in (tmp_path / "site" / "reference").glob("*/index.html"):  # roles are links, not literal text
        html = page.read_text()
        assert not re.search(r":(func|class|meth|mod|data|attr|exc):", html), page
    assert 'href="../presets/#imguard.presets"' in api  # :mod:`imguard.presets` became a link
    example = api[api.index("Loads models once"):][:600]
    assert '<div class="highlight">' in example  # the Protector example is a code block
    assert (tmp_path / "site" / "img" / "serve.png").is_file()
    assert "img/serve.png" in (tmp_path / "site" / "guide" / "web" / "index.html").read_text()


def test_readme_links_into_the_docs_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert any(link.startswith("docs/guide/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), link


def test_every_page_is_in_the_nav_and_every_relative_link_resolves():
    nav = (ROOT / "mkdocs.yml").read_text()
    docs = ROOT / "docs"
    for page in docs.rglob("*.md"):
        rel = page.relative_to(docs).as_posix()
        if not rel.startswith("benchmarks/"):  # raw reports: linked from benchmarks.md, not in the nav
            assert f" {rel}" in nav, f"{rel} is not in mkdocs.yml's nav"
    pages = [*docs.rglob("*.md"), ROOT / "README.md"]
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link) or link.startswith("#"):
                continue
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.exists(), f"{page.relative_to(ROOT)}: broken link {link}"
            if target.is_dir() and page != ROOT / "README.md":  # the docs site needs a page there
                assert (target / "index.md").is_file(), f"{page.relative_to(ROOT)}: {link} is a folder without index.md"
