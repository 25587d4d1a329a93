"""The fixed-seed outputs of every strength and method are bit-identical to the recorded ones
(recorded from main before the restructuring, one set per CPU; see tests/reference_cases.py)."""

import json

import pytest

from reference_cases import RECORD, compute, platform_key


def test_outputs_are_bit_identical_to_the_record(tiny_vae_dir):
    from conftest import TinyRecognizer

    from imguard.models import Models

    records = json.loads(RECORD.read_text())
    key = platform_key()
    if key not in records:
        pytest.skip(f"no reference outputs recorded on this CPU ({key}; recorded: {', '.join(sorted(records))}); "
                    "add them with PYTHONPATH=src python tests/reference_cases.py --add when nothing has changed")
    recorded = records[key]
    models = Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=None)
    now = compute(models)
    assert set(now) == set(recorded)
    changed = [k for k in recorded if now[k] != recorded[k]]
    assert not changed, f"outputs changed on {key} for: {changed}"


def test_the_record_is_kept_by_cpu():
    records = json.loads(RECORD.read_text())
    assert records and all(k.count("/") == 2 and isinstance(v, dict) and v for k, v in records.items())
    assert len({frozenset(v) for v in records.values()}) == 1  # every CPU's set has the same cases
