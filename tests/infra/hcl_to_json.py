"""Parses every .tf file of a folder with python-hcl2 (checkov's fork, bc-python-hcl2, in the infra environment) and
prints {file: parsed} as JSON. Run by the infra environment's Python: the project's has no HCL parser."""

import json
import sys
from pathlib import Path

import hcl2

folder = Path(sys.argv[1])
parsed = {}
for path in sorted(folder.glob("*.tf")):
    with path.open() as f:
        parsed[path.name] = hcl2.load(f)
print(json.dumps(parsed, default=str))
