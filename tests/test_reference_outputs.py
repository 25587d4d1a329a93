"""The fixed-seed outputs of every strength and method are bit-identical to the recorded ones
(recorded from main before the restructuring; see tests/reference_cases.py)."""

import json

from reference_cases import RECORD, compute


def test_outputs_are_bit_identical_to_the_record(tiny_vae_dir):
    from conftest import TinyRecognizer

    from imguard.models import Models

    models = Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=None)
    recorded = json.loads(RECORD.read_text())
    now = compute(models)
    assert set(now) == set(recorded)
    changed = [k for k in recorded if now[k] != recorded[k]]
    assert not changed, f"outputs changed for: {changed}"
