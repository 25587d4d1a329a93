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
    assert block[1].startswith(".venv/bin/imguard protect") and "--face-model sface" in block[1]


def test_ci_installs_the_browser_before_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text()
    apt = 'if [ "${CI:-}" = true ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; fi'
    assert apt in ci and ci.index(apt) < ci.index('bash -c "$cmd"')
