"""Telemetry event ids are uuid5 of the record's identity, formed without uuid objects: the same ids as before."""

from __future__ import annotations

import random
import string
import uuid

from shared.observability import _EVENT_NAMESPACE, telemetry_event_id


def test_event_ids_equal_uuid5_of_the_records_identity():
    rng = random.Random(5)

    def text() -> str:
        return "".join(rng.choice(string.printable + "éß✓") for _ in range(rng.randint(0, 40)))

    for _ in range(3000):
        parts = {"study_id": text(), "execution_id": text(), "stage": text(), "status": text(), "model_name": rng.choice([None, text()])}
        name = "|".join((parts["study_id"], parts["execution_id"], parts["stage"], parts["model_name"] or "", parts["status"]))
        assert telemetry_event_id(**parts) == str(uuid.uuid5(_EVENT_NAMESPACE, name))


def test_a_known_id_does_not_change():
    # Ids already in lakes must stay what they were: this one was made by uuid.uuid5 before the rewrite.
    expected = str(uuid.uuid5(uuid.UUID("8c4c7f5e-2f0b-4d59-9a53-1f7f0f6c2a11"), "demo-001|exec-1|validate||succeeded"))
    assert telemetry_event_id(study_id="demo-001", execution_id="exec-1", stage="validate", status="succeeded") == expected
