# The two commands the README promises: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
# Empty as root (CI, the dev machines); `make dcmtk SUDO=sudo` elsewhere.
SUDO ?=
# Debian packages for the tests' real peers, installed only when missing. apt waits up to 5 minutes for another
# process's dpkg lock, and the whole update+install is tried 5 times (a lock held past that, a mirror hiccup).
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300
apt_install = for try in 1 2 3 4 5; do $(APT_GET) update && $(APT_GET) install -y --no-install-recommends $(1) && exit 0; \
	echo "apt-get failed (try $$try of 5); retrying in 15 s" >&2; sleep 15; done; exit 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every environment installs from a lock (exact versions, sha256 hashes); `make lock` rewrites the locks from the
# *.txt files that say what we ask for. pip checks every hash, and resolves nothing (--no-deps).
PIP_LOCKED := -m pip install --quiet --require-hashes --no-deps
LOCKS := requirements-dev.lock requirements-triton.lock requirements-triton-python.lock pyproject.toml

.PHONY: venv venv-train dcmtk orthanc demo demo-models demo-pacs test lint typecheck test-unit test-integration test-e2e test-service test-torch models bench schemas clean chromium screenshots lock

$(STAMP): $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP_LOCKED) -r requirements-dev.lock
	# nvidia-pytriton is installed for its tritonserver binary only; see requirements-triton.txt.
	$(BIN)/python $(PIP_LOCKED) -r requirements-triton.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from radstream.triton_server import ensure_python_backend_env; ensure_python_backend_env()"
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/radstream demo --data-dir radstream-data

# Model lifecycle (docs/model-lifecycle.md): a second classifier imported, run in shadow, feedback from a CSV, compared.
demo-models: venv
	$(BIN)/radstream demo-models --data-dir radstream-data-models

# Orthanc as the hospital's PACS, the gateway in front of the pipeline; storescu sends, QIDO-RS finds the SRs and overlays.
demo-pacs: venv dcmtk orthanc
	$(BIN)/radstream demo --pacs --data-dir radstream-data

# The DICOM tests write JPEG Baseline/Extended/Lossless (dcmcjpeg) and Big Endian (dcmconv) files with dcmtk,
# Debian's package; the gateway's tests use its echoscu/storescu (the modality) and dsrdump (reads the SR).
# dicom3tools' dciodvfy checks the overlay (Secondary Capture) against its IOD. GDCM's gdcmconv (libgdcm-tools)
# writes the conformance corpus's JPEG 2000 (and its own JPEG, JPEG-LS, RLE) files, a second encoder beside dcmtk.
# Installed only when missing, so a second run costs nothing.
dcmtk:
	@{ command -v dcmcjpeg >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; } || { $(call apt_install,dcmtk dicom3tools); }
	@command -v gdcmconv >/dev/null 2>&1 || { $(call apt_install,libgdcm-tools); }

# The gateway's tests start Orthanc (Debian's PACS, with its DICOMweb plugin) as the hospital; installed only when missing.
# Debian's package does not start the daemon in a container (policy-rc.d); the tests run their own on free ports.
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } || { $(call apt_install,orthanc orthanc-dicomweb); }

test: lint typecheck venv dcmtk orthanc chromium
	RADSTREAM_IMAGE_TESTS=1 $(BIN)/python -m pytest -q

# The gates, run by make test before the suite: ruff's rules and format (pyproject.toml says which and why), mypy.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# The layers of `make test` (conftest.py says which folder is which): each alone, for a quicker loop.
test-unit: venv
	$(BIN)/python -m pytest -q -m unit

test-integration: venv dcmtk orthanc chromium
	RADSTREAM_IMAGE_TESTS=1 $(BIN)/python -m pytest -q -m integration

test-e2e: venv dcmtk
	$(BIN)/python -m pytest -q -m e2e

# One service alone, as its CI job runs it (.github/workflows/<service>.yml): a fresh environment from that service's
# test lock only (its image's lock plus pytest and the test data's libraries), its tests, then its image's import test
# (a clean environment from the image's lock, only the files its Dockerfile copies). A requirement missing from the
# service's lock fails here, not in production. `make test-service SERVICE=prepare`.
SERVICE_VENV = .venv-service-$(SERVICE)
test-service:
	@test -n "$(SERVICE)" && test -f services/$(SERVICE)/requirements-test.lock || { echo "usage: make test-service SERVICE=<a folder of services/ with a requirements-test.lock>" >&2; exit 2; }
	rm -rf $(SERVICE_VENV)
	$(PYTHON) -m venv $(SERVICE_VENV)
	$(SERVICE_VENV)/bin/python $(PIP_LOCKED) -r services/$(SERVICE)/requirements-test.lock
	$(SERVICE_VENV)/bin/python -m pytest -q services/$(SERVICE)
	RADSTREAM_IMAGE_TESTS=1 $(SERVICE_VENV)/bin/python -m pytest -q tests/infra/test_service_images.py -k $(SERVICE)

# The headline benchmark, quick: the pipeline against the irreducible work on 1024² studies (prints medians and ratios).
bench: venv
	$(BIN)/python benchmarks/limit_bench.py --quick

# The console's browser tests drive Debian's Chromium through playwright (never `playwright install`: no browser download).
chromium:
	@command -v chromium >/dev/null || { $(call apt_install,chromium); }

# The README's screenshots, made by the browser tests.
screenshots: venv chromium
	RADSTREAM_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/console

# The tests that need torch (training, torchxrayvision import) use their own virtual environment.
.venv-train/.installed: training/requirements.lock
	test -x .venv-train/bin/python || $(PYTHON) -m venv .venv-train
	.venv-train/bin/python $(PIP_LOCKED) -r training/requirements.lock
	touch $@

# The environment with torch: `radstream models import-torchxrayvision` runs the import there.
venv-train: .venv-train/.installed

test-torch: venv .venv-train/.installed
	.venv-train/bin/python -m pytest -q -m torch training --confcutdir=training

models: .venv-train/.installed
	.venv-train/bin/python training/train_reference_models.py

schemas: venv
	$(BIN)/python -m shared.contracts

# Rewrites every *.lock from its *.txt (uv, itself installed from a lock); review the diff, run `make test`, commit.
.venv-lock/.installed: requirements-lock.lock
	test -x .venv-lock/bin/python || $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python $(PIP_LOCKED) -r requirements-lock.lock
	touch $@

lock: .venv-lock/.installed
	UV=.venv-lock/bin/uv scripts/lock.sh

clean:
	rm -rf $(VENV) .venv-train radstream-data
