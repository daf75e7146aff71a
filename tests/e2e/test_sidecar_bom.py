"""Sidecars are read in one place (shared/sidecar.py): a UTF-8 byte-order mark changes nothing anywhere."""

from __future__ import annotations

import codecs
import json

import pytest

from synthetic.images import gradient_png
from synthetic.samples import make_sidecar
from radstream.local_aws import upload_key_study_id
from radstream.runtime import LocalRuntime
from services.validate.domain import ValidateRequest, validate_study
from shared.errors import InvalidStudy
from shared.settings import Settings
from shared.sidecar import SidecarUnreadable, parse_sidecar_bytes


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode(),
        lambda text: codecs.BOM_UTF8 + text.encode(),
        lambda text: text.encode("utf-16"),  # Notepad's "Unicode": UTF-16 LE with its BOM
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-bom"],
)
def test_one_parser_reads_every_unicode_form(encode):
    doc = make_sidecar(study_id="bom-001")
    assert parse_sidecar_bytes(encode(json.dumps(doc))) == doc


def test_unreadable_bytes_say_where():
    with pytest.raises(SidecarUnreadable, match="not valid JSON at line 1, column 14"):
        parse_sidecar_bytes(codecs.BOM_UTF8 + b'{"study_id": ')
    with pytest.raises(SidecarUnreadable, match="not valid JSON"):
        parse_sidecar_bytes(b'{"study_id": "\xff"}')


def test_runtime_takes_the_id_from_a_bom_sidecar_not_the_folder(tmp_path):
    folder = tmp_path / "Exported Study (1)"
    folder.mkdir()
    (folder / "study.json").write_bytes(codecs.BOM_UTF8 + json.dumps(make_sidecar(study_id="bom-001")).encode())
    assert upload_key_study_id(folder, folder / "study.json") == "bom-001"


def test_validate_accepts_a_bom_sidecar(store, upload):
    image = gradient_png()
    key = upload(codecs.BOM_UTF8 + json.dumps(make_sidecar(study_id="bom-001", data=image)).encode(), image, study_id="bom-001")
    assert validate_study(ValidateRequest(bucket="images", key=key), store, 10_000_000).study_id == "bom-001"
    with pytest.raises(InvalidStudy, match="study bom-001: sidecar is not valid JSON at line 1"):
        validate_study(ValidateRequest(bucket="images", key=upload(codecs.BOM_UTF8 + b"{", image, study_id="bom-001")), store, 10_000_000)


def test_a_bom_sidecar_in_a_differently_named_folder_runs_end_to_end(tmp_path):
    image = gradient_png(512, 512)
    folder = tmp_path / "studies" / "Exported Study (1)"
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(image)
    (folder / "study.json").write_bytes(codecs.BOM_UTF8 + json.dumps(make_sidecar(study_id="bom-001", data=image)).encode())
    runtime = LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1)
    try:
        [outcome] = runtime.run_many([folder]).outcomes
    finally:
        runtime.close()
    assert (outcome.study_id, outcome.status, outcome.message) == ("bom-001", "succeeded", None)
    assert (tmp_path / "data" / "results" / "results" / "bom-001" / "result.json").is_file()
