"""The EKS manifests as checkov's Kubernetes checks see them, on every kustomize build: base and overlays, the
cluster-wide pieces, each environment's overlay, and what infra/deliver.py render renders for Argo CD (images by
digest in the environment's ECR, in samconfig.toml's region, the stacks' outputs set)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

ENVS = ROOT / "infra" / "gitops" / "envs"
DELIVER = ROOT / "infra" / "deliver.py"
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text())
ENVIRONMENTS = sorted(p.name for p in ENVS.iterdir())
ACCOUNT = "123456789012"
BUILDS = [
    ROOT / "services/triton/k8s/base",
    ROOT / "services/triton/k8s/overlays/cpu",
    ROOT / "services/triton/k8s/cluster",
    ROOT / "services/gateway/k8s/base",
    ROOT / "infra/gitops/argocd",
    *sorted(ENVS.glob("*/*")),
]
REPO_URL = "https://github.com/example-hospital/radstream.git"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")


def build(folder: Path) -> str:
    return subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True, timeout=60).stdout


def stack_outputs(env: str) -> list[dict[str, str]]:
    """The outputs deliver.py render reads, shaped as `aws cloudformation describe-stacks` gives them, for a made-up account."""
    region = SAMCONFIG[env]["deploy"]["parameters"]["region"]
    values = {
        "ArtifactsBucketName": f"radstream-artifacts-{ACCOUNT}",
        "ImagesBucketName": f"radstream-images-{ACCOUNT}",
        "TritonModelReaderRoleArn": f"arn:aws:iam::{ACCOUNT}:role/radstream-{env}-triton",
        "GatewayUploaderRoleArn": f"arn:aws:iam::{ACCOUNT}:role/radstream-{env}-gateway",
        "GatewayPseudonymKeyArn": f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:radstream/{env}/gateway/pseudonym-key-Ab12Cd",
        "GatewayS3EndpointUrl": f"https://bucket.vpce-0a1b2c3d4e5f60718-abcd1234.s3.{region}.vpce.amazonaws.com",
    }
    return [{"OutputKey": k, "OutputValue": v} for k, v in values.items()]


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def run_render(env: str, tmp_path: Path, *extra: str, outputs: list[dict[str, str]] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "outputs.json").write_text(json.dumps(stack_outputs(env) if outputs is None else outputs))
    digests = [f"--digest={name}={digest(name)}" for name in ("gateway", "tritonserver", "k8s-device-plugin")]
    outputs_file, out = str(tmp_path / "outputs.json"), str(tmp_path / "rendered")
    return deliver(
        "render", "--env", env, "--account", ACCOUNT, "--outputs", outputs_file, *digests, "--repo-url", REPO_URL, "--out", out, *extra
    )


def deliver(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The delivery script with these arguments; its exit code and stderr are the test's to check."""
    return subprocess.run([sys.executable, str(DELIVER), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for env in ENVIRONMENTS:
        folder = tmp_path_factory.mktemp(env)
        result = run_render(env, folder)
        assert result.returncode == 0, result.stderr
        out[env] = folder / "rendered"
    return out


@pytest.fixture(scope="module")
def checkov_report(infra_python: Path, rendered: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One checkov run over every build (one file each): the machine is shared, checkov is slow to start."""
    folder = tmp_path_factory.mktemp("builds")
    for path in BUILDS:
        (folder / ("build-" + str(path.relative_to(ROOT)).replace("/", "_") + ".yaml")).write_text(build(path))
    for env, out in rendered.items():
        for manifests in out.glob("*/manifests.yaml"):
            (folder / f"rendered-{env}_{manifests.parent.name}.yaml").write_text(manifests.read_text())
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [str(infra_python.parent / "checkov"), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=folder,
        check=False,
    )
    report = json.loads(result.stdout)
    report["files"] = sorted(p.name for p in folder.glob("*.yaml"))
    return report


def test_checkov_kubernetes_finds_nothing_on_any_build(checkov_report):
    failed = [f"{c['file_path']}: {c['check_id']} {c['resource']}: {c['check_name']}" for c in checkov_report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert checkov_report["summary"]["parsing_errors"] == 0
    scanned = {c["file_path"].lstrip("/") for c in checkov_report["results"]["passed_checks"]}
    # Argo CD's Applications and AppProject are custom resources no Kubernetes check reads (tests/infra/test_gitops.py does).
    expected = {f for f in checkov_report["files"] if not f.endswith("argocd.yaml")}
    assert scanned == expected, expected ^ scanned


def test_every_skip_says_why_and_the_rendered_manifests_skip_no_digest_check(checkov_report):
    skipped = checkov_report["results"]["skipped_checks"]
    for check in skipped:
        assert len(check["check_result"]["suppress_comment"]) > 40, f"{check['file_path']}: {check['check_id']} without a reason"
    # base skips the digest check (it names tags for review); what Argo CD deploys faces it.
    assert not [c for c in skipped if c["file_path"].lstrip("/").startswith("rendered-") and c["check_id"] == "CKV_K8S_43"]
    assert [c for c in checkov_report["results"]["passed_checks"] if c["check_id"] == "CKV_K8S_43" and "rendered-" in c["file_path"]]


def test_rendered_images_are_by_digest_in_the_environments_ecr_in_samconfigs_region(rendered):
    for env, out in rendered.items():
        region = SAMCONFIG[env]["deploy"]["parameters"]["region"]
        images = []
        for manifests in out.glob("*/manifests.yaml"):
            text = manifests.read_text()
            assert "111122223333" not in text and not re.search(r"\b(us|eu|ap|ca|sa|me|af)-[a-z]+-\d\b(?<!" + region + ")", text), manifests
            for doc in yaml.safe_load_all(text):
                for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                    images.append(container["image"])
        assert len(images) == 3, images
        for image in images:
            assert re.fullmatch(
                rf"{ACCOUNT}\.dkr\.ecr\.{region}\.amazonaws\.com/radstream-{env}/[a-z0-9-]+@sha256:[0-9a-f]{{64}}", image
            ), image


def test_one_region_everywhere():
    """samconfig.toml deploys every stack to one region; the manifests name no other (no placeholder registry elsewhere)."""
    regions = {t["deploy"]["parameters"]["region"] for name, t in SAMCONFIG.items() if isinstance(t, dict) and "deploy" in t}
    (region,) = regions
    for folder in (ROOT / "services/triton/k8s", ROOT / "services/gateway/k8s", ROOT / "infra/gitops"):
        for path in folder.rglob("*.yaml"):
            found = set(re.findall(r"\b(?:us|eu|ap|ca|sa|me|af)-[a-z]+-\d\b", path.read_text()))
            assert found <= {region}, f"{path.relative_to(ROOT)}: {found}"


def test_each_environment_overlay_holds_its_platform_vpc_cidr():
    for env in ENVIRONMENTS:
        overrides = dict(i.split("=", 1) for i in SAMCONFIG[f"{env}-platform"]["deploy"]["parameters"]["parameter_overrides"])
        for app, policy in (("triton", "triton"), ("gateway", "gateway")):
            docs = list(yaml.safe_load_all(build(ENVS / env / app)))
            (netpol,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == policy]
            cidrs = {
                b["ipBlock"]["cidr"]
                for rule in netpol["spec"].get("ingress", []) + netpol["spec"].get("egress", [])
                for b in rule.get("from", []) + rule.get("to", [])
                if "ipBlock" in b
            }
            assert overrides["VpcCidr"] in cidrs and not {c for c in cidrs if c.startswith("10.") and c != overrides["VpcCidr"]}, (
                env,
                app,
                cidrs,
            )


def test_render_refuses_what_cannot_deploy(tmp_path):
    missing = [o for o in stack_outputs("dev") if o["OutputKey"] != "TritonModelReaderRoleArn"]
    result = run_render("dev", tmp_path, "--app", "triton", outputs=missing)
    assert result.returncode == 2 and "TritonModelReaderRoleArn" in result.stderr
    dev = ("render", "--env", "dev", "--account", ACCOUNT)
    result = deliver(*dev, "--digest", "gateway=latest", "--app", "gateway", "--out", str(tmp_path / "x"), timeout=120)
    assert result.returncode == 2 and "digest of gateway" in result.stderr
    # No digest for an image: not pinned, refused rather than deployed by tag.
    (tmp_path / "outputs.json").write_text(json.dumps(stack_outputs("dev")))
    result = deliver(*dev, "--outputs", str(tmp_path / "outputs.json"), "--app", "triton", "--out", str(tmp_path / "y"), timeout=120)
    assert result.returncode == 2 and "not pinned by digest" in result.stderr
