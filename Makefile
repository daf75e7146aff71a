# The two commands the README promises: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
# Empty as root (CI, the dev machines); `make dcmtk SUDO=sudo` elsewhere.
SUDO ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements-dev.txt $(wildcard requirements-*.txt) shared/requirements.txt $(wildcard services/*/requirements.txt) pyproject.toml

.PHONY: venv venv-train dcmtk orthanc demo demo-pacs test test-unit test-torch models bench schemas clean chromium screenshots

$(STAMP): $(REQUIREMENTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# nvidia-pytriton is installed for its tritonserver binary only; see requirements-triton.txt.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-triton.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "from radstream.triton_server import ensure_python_backend_env; ensure_python_backend_env()"
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/radstream demo --data-dir radstream-data

# Orthanc as the hospital's PACS, the gateway in front of the pipeline; storescu sends, QIDO-RS finds the SRs and overlays.
demo-pacs: venv dcmtk orthanc
	$(BIN)/radstream demo --pacs --data-dir radstream-data

# The DICOM tests write JPEG Baseline/Extended/Lossless (dcmcjpeg) and Big Endian (dcmconv) files with dcmtk,
# Debian's package; the gateway's tests use its echoscu/storescu (the modality) and dsrdump (reads the SR).
# dicom3tools' dciodvfy checks the overlay (Secondary Capture) against its IOD.
# Installed only when missing, so a second run costs nothing.
dcmtk:
	@{ command -v dcmcjpeg >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; } || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dcmtk dicom3tools; }

# The gateway's tests start Orthanc (Debian's PACS, with its DICOMweb plugin) as the hospital; installed only when missing.
# Debian's package does not start the daemon in a container (policy-rc.d); the tests run their own on free ports.
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends orthanc orthanc-dicomweb; }

test: venv dcmtk orthanc chromium
	RADSTREAM_IMAGE_TESTS=1 $(BIN)/python -m pytest -q

# The console's browser tests drive Debian's Chromium through playwright (never `playwright install`: no browser download).
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

# The README's screenshots, made by the browser tests.
screenshots: venv chromium
	RADSTREAM_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/console

# The tests that need torch (training, torchxrayvision import) use their own virtual environment.
.venv-train/.installed: training/requirements.txt
	test -x .venv-train/bin/python || $(PYTHON) -m venv .venv-train
	.venv-train/bin/python -m pip install --quiet -r training/requirements.txt
	touch $@

# The environment with torch: `radstream models import-torchxrayvision` runs the import there.
venv-train: .venv-train/.installed

test-torch: venv .venv-train/.installed
	.venv-train/bin/python -m pytest -q -m torch training --confcutdir=training

models: .venv-train/.installed
	.venv-train/bin/python training/train_reference_models.py

schemas: venv
	$(BIN)/python -m shared.contracts

clean:
	rm -rf $(VENV) .venv-train radstream-data
