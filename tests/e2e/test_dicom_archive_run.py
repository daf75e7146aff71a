"""A folder of DICOM files in every transfer syntax a CR/DX archive uses runs through `radstream run` with no failure;
decompression bombs end as refusals that name their size and the limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthetic.images import jpeg_claiming, one_bit_png
from synthetic.samples import make_sidecar
from radstream.cli import EXIT_FAILED_STUDIES, main
from synthetic.phantoms import generate_phantom
from synthetic.transfer_syntaxes import SYNTAXES, write_transfer_syntax_studies


def test_every_transfer_syntax_runs_end_to_end(tmp_path, capsys):
    picture = generate_phantom(np.random.default_rng(5), size=384).image
    folders = write_transfer_syntax_studies(tmp_path / "archive", picture)
    assert len(folders) == 2 * len(SYNTAXES)
    code = main(["run", str(tmp_path / "archive"), "--data-dir", str(tmp_path / "data"), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    failed = [(s["study_id"], s["stage"], s["message"]) for s in summary["studies"] if s["status"] != "succeeded"]
    assert failed == [] and code == 0
    assert summary["totals"]["succeeded"] == 2 * len(SYNTAXES)
    rules = {}
    for study in summary["studies"]:
        result = json.loads(Path(study["output"]).read_text())
        assert (result["input"]["width"], result["input"]["height"]) == (384, 384)
        rules[study["study_id"]] = result["input"]["intensity_rule"]
    assert rules["dcm-jpeg-baseline-monochrome1"] == "dicom-8bit-percentile-inverted"
    assert rules["dcm-jpeg2000-lossless-monochrome2"] == "dicom-12bit-percentile"


@pytest.mark.parametrize("name, size", [("png", 40000), ("jpeg", 60000)])
def test_bombs_are_refused_naming_size_and_limit(tmp_path, capsys, name, size):
    folder = tmp_path / "studies" / f"bomb-{name}"
    folder.mkdir(parents=True)
    (folder / f"image.{name}").write_bytes(one_bit_png(size, size) if name == "png" else jpeg_claiming(size, size))
    (folder / "study.json").write_text(json.dumps(make_sidecar(study_id=f"bomb-{name}", image=f"image.{name}")))
    assert main(["run", str(folder), "--data-dir", str(tmp_path / "data"), "--json", "--quiet"]) == EXIT_FAILED_STUDIES
    [study] = json.loads(capsys.readouterr().out)["studies"]
    assert (study["stage"], study["error_type"]) == ("validate", "InvalidImage")
    assert study["message"] == (
        f"study bomb-{name}: image is {size} x {size} pixels x 1 channel(s) = {size * size:,} samples by its {name.upper()} header, "
        "over the 100,000,000-sample limit (MAX_IMAGE_PIXELS); it was not decoded"
    )
