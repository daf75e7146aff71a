"""Renders one environment's EKS manifests for Argo CD: its overlay (infra/gitops/envs/<env>/<app>) with every image
pinned by digest in that environment's ECR and the stacks' outputs (role ARNs, buckets, the S3 endpoint) set.

    python infra/gitops/render.py --env dev --account 123456789012 \
        --outputs sam-outputs.json --outputs platform-outputs.json \
        --digest gateway=sha256:... --digest tritonserver=sha256:... --digest k8s-device-plugin=sha256:... \
        --out rendered/

The outputs files are `aws cloudformation describe-stacks --query 'Stacks[0].Outputs'` (a list of OutputKey and
OutputValue). The region is samconfig.toml's for the environment: one registry and region story for the Lambdas
(SAM) and the pods. The delivery workflow pushes what this writes to the branch gitops/<env>, which the
environment's Argo CD Applications (infra/gitops/argocd) follow; nothing applies a manifest by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / "infra" / "gitops" / "envs"
APPS = ("cluster", "triton", "gateway")
# The name each base manifest gives an image -> its repository in the environment's ECR (infra/delivery.yaml).
IMAGES = {
    "nvcr.io/nvidia/tritonserver": "tritonserver",
    "nvcr.io/nvidia/k8s-device-plugin": "k8s-device-plugin",
    "radstream/gateway": "gateway",
}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The example account of AWS's documentation, which the base manifests use where an environment's value goes.
EXAMPLE_ACCOUNT = "111122223333"


class RenderError(Exception):
    """The inputs cannot make a deployable manifest (a missing output, a malformed digest, a placeholder left)."""


def region(env: str) -> str:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    return config[env]["deploy"]["parameters"]["region"]


def repository(account: str, env: str, name: str) -> str:
    return f"{account}.dkr.ecr.{region(env)}.amazonaws.com/radstream-{env}/{name}"


def load_outputs(paths: list[Path]) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for path in paths:
        data = json.loads(path.read_text())
        outputs.update({o["OutputKey"]: o["OutputValue"] for o in data} if isinstance(data, list) else data)
    return outputs


def settings(app: str, env: str, outputs: dict[str, str]) -> list[dict[str, Any]]:
    """Strategic-merge patches with the environment's values for what base leaves to an overlay."""
    aws_region = region(env)

    def output(key: str) -> str:
        if key not in outputs:
            raise RenderError(f"stack output {key} is missing (needed by {app})")
        return outputs[key]

    def config_map(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
                "data": {"AWS_REGION": aws_region, "AWS_DEFAULT_REGION": aws_region, **data}}

    def role(name: str, namespace: str, arn: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace, "annotations": {"eks.amazonaws.com/role-arn": arn}}}

    if app == "triton":
        return [config_map("triton-settings", "radstream-triton",
                           {"MODEL_REPOSITORY": f"s3://{output('ArtifactsBucketName')}/model_repository"}),
                role("triton", "radstream-triton", output("TritonModelReaderRoleArn"))]
    if app == "gateway":
        return [config_map("gateway-settings", "radstream-gateway",
                           {"IMAGES_BUCKET": output("ImagesBucketName"),
                            "AWS_ENDPOINT_URL_S3": output("GatewayS3EndpointUrl"),
                            "GATEWAY_PSEUDONYM_SECRET_ARN": output("GatewayPseudonymKeyArn")}),
                role("gateway", "radstream-gateway", output("GatewayUploaderRoleArn"))]
    return []


def render(env: str, app: str, account: str, digests: dict[str, str], outputs: dict[str, str]) -> str:
    if not re.fullmatch(r"\d{12}", account):
        raise RenderError("account must be a 12-digit AWS account id")
    for name, digest in digests.items():
        if not DIGEST.fullmatch(digest):
            raise RenderError(f"digest of {name} is not sha256:<64 hex>")
    overlay = ENVS / env / app
    if not overlay.is_dir():
        raise RenderError(f"no overlay {overlay.relative_to(ROOT)}")
    with tempfile.TemporaryDirectory() as work:
        patches = settings(app, env, outputs)
        for i, patch in enumerate(patches):
            (Path(work) / f"patch-{i}.yaml").write_text(yaml.safe_dump(patch))
        kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [os.path.relpath(overlay, work)],
                         "images": [{"name": name, "newName": repository(account, env, repo), "digest": digests[repo]}
                                    for name, repo in IMAGES.items() if repo in digests],
                         "patches": [{"path": f"patch-{i}.yaml"} for i in range(len(patches))]}
        (Path(work) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run(["kubectl", "kustomize", work], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RenderError(f"kustomize failed for {env}/{app}: {result.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        # base's reason for skipping checkov's digest check is void once the digest is set: the rendered
        # manifests face that check.
        annotations = doc["metadata"].get("annotations", {})
        for key in [k for k, v in annotations.items() if k.startswith("checkov.io/skip") and v.startswith("CKV_K8S_43=")]:
            del annotations[key]
        if "annotations" in doc["metadata"] and not annotations:
            del doc["metadata"]["annotations"]
    rendered = yaml.safe_dump_all(docs, sort_keys=False)
    check(rendered, env, app, account)
    return rendered


def check(rendered: str, env: str, app: str, account: str) -> None:
    """Every image in the environment's ECR by digest; no example account or other region left."""
    if EXAMPLE_ACCOUNT in rendered:
        raise RenderError(f"{env}/{app}: a value of the example account {EXAMPLE_ACCOUNT} is left: set it from a stack output")
    for doc in yaml.safe_load_all(rendered):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container["image"]
            name, _, digest = image.partition("@")
            if not DIGEST.fullmatch(digest) or not name.startswith(f"{account}.dkr.ecr.{region(env)}.amazonaws.com/"):
                raise RenderError(f"{env}/{app}: container {container['name']} is not pinned by digest in the environment's ECR (pass --digest)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--outputs", type=Path, action="append", default=[])
    parser.add_argument("--digest", action="append", default=[], help="repository=sha256:... (gateway, tritonserver, k8s-device-plugin)")
    parser.add_argument("--app", action="append", choices=APPS, help="default: all")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    digests = dict(d.split("=", 1) for d in args.digest)
    try:
        outputs = load_outputs(args.outputs)
        for app in args.app or APPS:
            rendered = render(args.env, app, args.account, digests, outputs)
            (args.out / app).mkdir(parents=True, exist_ok=True)
            (args.out / app / "manifests.yaml").write_text(rendered)
    except RenderError as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
