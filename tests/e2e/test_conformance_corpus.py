"""The conformance corpus (issue 20): pydicom's own test images re-tagged as chest CR/DX/SC, and each of them and the
phantoms transcoded by dcmtk and GDCM, run through `radstream run` and through the gateway. Every file gets a result
(or a failure record where no reference decoder reads it either), each picture agrees with itself across containers,
and every SR, overlay and FHIR bundle the export writes is valid. benchmarks/conformance.py builds and runs it; this
test runs the same code (`--transcode classes`: every original, one transcoded source per pixel-module class) and
prints the table. A transcoder or validator that is missing fails, never skips."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from benchmarks import conformance as corpus
from shared.settings import ENVIRONMENT

PIXEL_MODULE = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    with pytest.MonkeyPatch.context() as env:
        for var in ENVIRONMENT.values():  # the module fixture runs before the hermetic one: no shell setting reaches the runs
            env.delenv(var, raising=False)
        found = corpus.conformance(tmp_path_factory.mktemp("conformance"), transcode_all=False, workers=2)
    print("\n" + corpus.format_table(found["rows"]))
    return found


def _read(path: Path | str | bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(path) if isinstance(path, bytes) else path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's own test files hold invalid values on purpose (badVR.dcm)
def test_every_local_single_frame_image_is_a_source_retagged_as_chest_with_its_pixels_untouched(report):
    root = Path(pydicom.data.DATA_ROOT) / "test_files"
    originals = {m.group: m for m in report["members"] if m.container == "original"}
    left_out = dict(report["left_out"])
    assert len([g for g in originals if g.startswith("pydicom/")]) >= 80
    assert {"phantom/monochrome1-12bit", "phantom/monochrome2-12bit"} <= set(originals)
    for path in corpus.pydicom_test_files():
        name = str(path.relative_to(root))
        try:
            source = _read(path)
        except Exception:
            continue
        if "PixelData" not in source:
            continue
        # Every image is either in the corpus or left out for a reason that is not "single-frame image".
        assert f"pydicom/{name}" in originals or left_out.get(name), name
        if f"pydicom/{name}" not in originals:
            assert left_out[name] in (
                "multi-frame",
                "NumberOfFrames is not an integer",
                "not an image: pixel module or transfer syntax missing",
            ), (name, left_out[name])
            continue
        member = originals[f"pydicom/{name}"]
        assert member.path, name
        retagged = _read(member.path)
        assert retagged.PixelData == source.PixelData, name
        for keyword in PIXEL_MODULE:
            assert retagged.get(keyword) == source.get(keyword), (name, keyword)
        assert retagged.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID, name
        assert retagged.BodyPartExamined == "CHEST" and retagged.Modality in ("CR", "DX"), name
        assert retagged.SOPClassUID in (corpus.CR_IMAGE_STORAGE, corpus.DX_FOR_PRESENTATION, corpus.SECONDARY_CAPTURE), name
        assert retagged.SOPInstanceUID != source.get("SOPInstanceUID") and retagged.StudyInstanceUID != source.get("StudyInstanceUID")


def test_every_container_is_written_for_the_phantoms(report):
    """dcmtk and GDCM write each of their syntaxes for a 12-bit grey picture; the others' refusals are recorded, not hidden."""
    for group in ("phantom/monochrome1-12bit", "phantom/monochrome2-12bit"):
        written = {m.container: m for m in report["members"] if m.group == group}
        assert set(written) == {"original", *(c.name for c in corpus.CONTAINERS)}
        assert all(m.path and not m.note for m in written.values()), [(m.container, m.note) for m in written.values() if m.note]
        for container in corpus.CONTAINERS:
            if container.uid:
                assert written[container.name].transfer_syntax == container.uid
    not_produced = [m for m in report["members"] if not m.path]
    assert all(m.note.startswith("not produced by ") for m in not_produced)


def test_both_entry_points_ran_every_file(report):
    produced = [m for m in report["members"] if m.path]
    for path in ("run", "gateway"):
        rows = [r for r in report["rows"] if r.path == path and not r.decoded.startswith("not produced")]
        assert len(rows) == len(produced)
        assert not [r for r in rows if r.decoded.startswith("crashed")], [
            (r.group, r.container, r.decoded) for r in rows if r.decoded.startswith("crashed")
        ]
    assert not _problems(report, "got no response"), _problems(report, "got no response")  # the gateway answers every C-STORE


def _problems(report: dict, word: str) -> list[str]:
    return [line for line in corpus.failures(report["rows"]) if word in line]


def test_every_file_gets_a_result_or_a_refusal_the_reference_decoders_share(report):
    problems = _problems(report, "refus")
    assert not problems, f"{len(problems)} file(s):\n" + "\n".join(problems)


def test_each_picture_agrees_with_itself_in_every_container(report):
    problems = _problems(report, "max |dp|")
    assert not problems, f"{len(problems)} file(s):\n" + "\n".join(problems)


def test_every_sr_and_overlay_passes_dciodvfy_and_every_bundle_validates(report):
    problems = [line for line in corpus.failures(report["rows"]) if "dciodvfy" in line or "FHIR" in line or "written" in line]
    assert not problems, f"{len(problems)} file(s):\n" + "\n".join(problems)


def test_a_missing_transcoder_fails_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(corpus.ToolMissing, match="gdcmconv|dcm"):
        corpus.build_corpus(tmp_path / "corpus")


def test_a_transcoder_refusing_an_input_is_recorded_as_not_produced():
    """dcmcjpeg has no lossless JPEG for 32-bit samples: that container is "not produced by dcmcjpeg", with its reason."""
    import numpy as np

    from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset

    ds = dicom_dataset(np.zeros((8, 8), np.uint16), bits_stored=16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.arange(64, dtype=np.uint32).tobytes()
    lossless = next(c for c in corpus.CONTAINERS if c.name == "dcmtk-jpeg-lossless")
    with pytest.raises(corpus.NotProduced, match=r"^not produced by dcmcjpeg: .+"):
        corpus.transcode(lossless, dataset_bytes(ds))


def test_a_decoder_panic_ends_as_the_studys_failure_record_and_the_others_run(tmp_path):
    """Found by the corpus: GDCM's RLE of pydicom's MR_small_padded.dcm makes pylibjpeg-rle panic (pyo3's PanicException,
    a BaseException): `radstream run` died with a traceback, no summary and no record for any study after it. Every
    per-study error, whatever its type, must end as that study's record while the others run (README, "Nothing lost")."""
    root = Path(pydicom.data.DATA_ROOT) / "test_files"
    rle = next(c for c in corpus.CONTAINERS if c.name == "gdcm-rle")
    members = []
    for name in ("MR_small_padded.dcm", "MR_small.dcm"):
        data = corpus.retag(_read(root / name), corpus.DX_FOR_PRESENTATION, "DX")
        encoded, syntax = corpus.transcode(rle, corpus.native(data))
        folder = tmp_path / "corpus" / name.removesuffix(".dcm")
        folder.mkdir(parents=True)
        (folder / "study.dcm").write_bytes(encoded)
        members.append(corpus.Member(f"pydicom/{name}", rle.name, False, syntax, str(folder / "study.dcm")))
    outcomes = corpus.run_cli(members, tmp_path / "run", workers=1)
    padded, plain = (outcomes[m.path] for m in members)
    assert plain.status == "succeeded", plain
    assert padded.status in ("succeeded", "failed") and padded.message != "", padded
    if padded.status == "failed":
        assert padded.stage == "prepare" and padded.error_type, padded
