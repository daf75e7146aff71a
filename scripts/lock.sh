#!/usr/bin/env bash
# `make lock`: resolve every environment's requirements (the *.txt files say what we ask for) into a lock with
# exact versions and sha256 hashes (the *.lock files say what is installed). Nothing else resolves versions:
# the Makefile, the Dockerfiles, the test fixtures and CI install only from these locks, with --require-hashes.
# Always from pypi.org, whatever index this machine's pip is configured with, so the hashes are PyPI's.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv-lock/bin/uv}
compile() {  # compile <input> <output> [uv options...]
  local input=$1 output=$2; shift 2
  "$UV" pip compile --quiet --generate-hashes --python-version 3.11 --index-url https://pypi.org/simple \
    --no-header --custom-compile-command "make lock" "$@" "$input" -o "$output"
  echo "locked $output"
}
compile requirements-dev.txt requirements-dev.lock
# Installed without dependency resolution (see requirements-triton.txt).
compile requirements-triton.txt requirements-triton.lock --no-deps
compile requirements-infra.txt requirements-infra.lock
compile requirements-lock.txt requirements-lock.lock
compile requirements-triton-python.txt requirements-triton-python.lock --no-deps
for requirements in services/*/requirements.txt services/*/requirements-test.txt; do
  compile "$requirements" "${requirements%.txt}.lock"
done
# The training environment's CPU torch is not on PyPI: its wheel comes from PyTorch's CPU index, which these machines
# mirror in /opt/wheels (TORCH_WHEELS points elsewhere).
compile training/requirements.txt training/requirements.lock --find-links "${TORCH_WHEELS:-/opt/wheels}"
