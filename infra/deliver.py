"""What the delivery workflow (.github/workflows/deploy-environment.yml) asks of the repository, in one place.

    python infra/deliver.py settings --env dev
        region, stack names and the other per-environment values, as GITHUB_OUTPUT lines, from samconfig.toml
    python infra/deliver.py image-repositories --repository <functions repository URI>
        sam deploy's --image-repositories, one line each: every image function of template.yaml to that repository
    python infra/deliver.py built-images [--template .aws-sam/build/template.yaml]
        the local images `sam build` made, to save once and deploy to every environment
    python infra/deliver.py upstream-images
        <repository>=<image> for each NVIDIA image the manifests name, to copy into the environment's ECR
    python infra/deliver.py render --env dev --account 123456789012 \
        --outputs sam-outputs.json --outputs platform-outputs.json \
        --digest gateway=sha256:... --digest tritonserver=sha256:... --digest k8s-device-plugin=sha256:... \
        --repo-url https://github.com/<owner>/<name>.git --out rendered/
        one environment's EKS manifests for Argo CD: its overlay (infra/gitops/envs/<env>/<app>) with every image
        pinned by digest in that environment's ECR and the stacks' outputs (role ARNs, buckets, the S3 endpoint) set,
        and the Argo CD Applications (infra/gitops/argocd) that follow them on the branch gitops/<env>

The outputs files are `aws cloudformation describe-stacks --query 'Stacks[0].Outputs'` (a list of OutputKey and
OutputValue). The region is samconfig.toml's for the environment: one registry and region story for the Lambdas
(SAM) and the pods. The workflow pushes what render writes to the branch gitops/<env>, which the environment's
Argo CD Applications (infra/gitops/argocd) follow; nothing applies a manifest by hand.
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

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "infra" / "gitops" / "envs"
APPS = ("cluster", "triton", "gateway", "argocd")
ARGOCD = ROOT / "infra" / "gitops" / "argocd"
ENVIRONMENTS = ("dev", "staging", "prod")
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
    """The inputs cannot make a deployment (an unknown environment, a missing output, a malformed digest, a placeholder left)."""


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
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"AWS_REGION": aws_region, "AWS_DEFAULT_REGION": aws_region, **data},
        }

    def role(name: str, namespace: str, arn: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "annotations": {"eks.amazonaws.com/role-arn": arn}},
        }

    if app == "triton":
        return [
            config_map(
                "triton-settings", "radstream-triton", {"MODEL_REPOSITORY": f"s3://{output('ArtifactsBucketName')}/model_repository"}
            ),
            role("triton", "radstream-triton", output("TritonModelReaderRoleArn")),
        ]
    if app == "gateway":
        return [
            config_map(
                "gateway-settings",
                "radstream-gateway",
                {
                    "IMAGES_BUCKET": output("ImagesBucketName"),
                    "AWS_ENDPOINT_URL_S3": output("GatewayS3EndpointUrl"),
                    "GATEWAY_PSEUDONYM_SECRET_ARN": output("GatewayPseudonymKeyArn"),
                },
            ),
            role("gateway", "radstream-gateway", output("GatewayUploaderRoleArn")),
        ]
    return []


def render(env: str, app: str, account: str, digests: dict[str, str], outputs: dict[str, str], repo_url: str = "") -> str:
    if not re.fullmatch(r"\d{12}", account):
        raise RenderError("account must be a 12-digit AWS account id")
    for name, digest in digests.items():
        if not DIGEST.fullmatch(digest):
            raise RenderError(f"digest of {name} is not sha256:<64 hex>")
    if env not in ENVIRONMENTS:
        raise RenderError(f"env must be one of {', '.join(ENVIRONMENTS)}")
    overlay = ARGOCD if app == "argocd" else ENVS / env / app
    if app == "argocd" and not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+\.git", repo_url):
        raise RenderError("repo-url must be the repository's https://<host>/<owner>/<name>.git (Argo CD's Applications follow it)")
    if not overlay.is_dir():
        raise RenderError(f"no overlay {overlay.relative_to(ROOT)}")
    with tempfile.TemporaryDirectory() as work:
        patches = settings(app, env, outputs)
        for i, patch in enumerate(patches):
            (Path(work) / f"patch-{i}.yaml").write_text(yaml.safe_dump(patch))
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay, work)],
            "images": [
                {"name": name, "newName": repository(account, env, repo), "digest": digests[repo]}
                for name, repo in IMAGES.items()
                if repo in digests
            ],
            "patches": [{"path": f"patch-{i}.yaml"} for i in range(len(patches))],
        }
        (Path(work) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run(["kubectl", "kustomize", work], capture_output=True, text=True, timeout=120, check=False)
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
        if doc["kind"] == "Application":
            doc["spec"]["source"].update(repoURL=repo_url, targetRevision=f"gitops/{env}")
        elif doc["kind"] == "AppProject":
            doc["spec"]["sourceRepos"] = [repo_url]
    rendered = yaml.safe_dump_all(docs, sort_keys=False)
    check(rendered, env, app, account)
    return rendered


def check(rendered: str, env: str, app: str, account: str) -> None:
    """Every image in the environment's ECR by digest; no example account or other region left."""
    if "OWNER/REPOSITORY" in rendered or "gitops/ENVIRONMENT" in rendered:
        raise RenderError(f"{env}/{app}: an Application still names the example repository or branch")
    if EXAMPLE_ACCOUNT in rendered:
        raise RenderError(f"{env}/{app}: a value of the example account {EXAMPLE_ACCOUNT} is left: set it from a stack output")
    for doc in yaml.safe_load_all(rendered):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container["image"]
            name, _, digest = image.partition("@")
            if not DIGEST.fullmatch(digest) or not name.startswith(f"{account}.dkr.ecr.{region(env)}.amazonaws.com/"):
                raise RenderError(
                    f"{env}/{app}: container {container['name']} is not pinned by digest in the environment's ECR (pass --digest)"
                )


def samconfig(env: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())[env]["deploy"]["parameters"]


def settings_lines(env: str) -> list[str]:
    if env.endswith(("-platform", "-delivery")) or env not in ENVIRONMENTS:
        raise RenderError(f"env must be one of {', '.join(ENVIRONMENTS)}")
    return [
        f"region={region(env)}",
        f"stack={samconfig(env)['stack_name']}",
        f"platform_stack={samconfig(env + '-platform')['stack_name']}",
        f"delivery_stack=radstream-{env}-delivery",
    ]


def image_functions(template: Path) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from radstream.template import load_yaml

    return {
        name: r
        for name, r in load_yaml(template)["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Lambda::Function") and r["Properties"].get("PackageType") == "Image"
    }


def image_repositories(repository: str) -> list[str]:
    """sam deploy's --image-repositories=FunctionLogicalId=<repository>, one per image function: SAM then creates no
    companion repositories (the deploy role may not), and tags each function's image apart in the one repository."""
    return [f"--image-repositories={name}={repository}" for name in image_functions(ROOT / "template.yaml")]


def built_images(template: Path) -> list[str]:
    """The local images `sam build` made (its template's ImageUri), for `docker save`: built once, deployed everywhere."""
    return sorted({r["Properties"]["ImageUri"] for r in image_functions(template).values()})


def upstream_images() -> dict[str, str]:
    """Repository in the environment's ECR -> the image the base manifests name upstream (nvcr.io), to copy there."""
    found = {}
    for folder in ("services/triton/k8s/base", "services/triton/k8s/cluster"):
        for path in sorted((ROOT / folder).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                for container in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                    name = re.split(r"[:@]", container["image"].split("/", 1)[1], maxsplit=1)[0]
                    upstream = next((k for k in IMAGES if k.split("/", 1)[1] == name), None)
                    if upstream and upstream.startswith("nvcr.io/"):
                        found[IMAGES[upstream]] = container["image"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    settings_parser = commands.add_parser("settings")
    settings_parser.add_argument("--env", required=True)
    repos = commands.add_parser("image-repositories")
    repos.add_argument("--repository", required=True)
    built = commands.add_parser("built-images")
    built.add_argument("--template", type=Path, default=ROOT / ".aws-sam" / "build" / "template.yaml")
    commands.add_parser("upstream-images")
    render_parser = commands.add_parser("render")
    render_parser.add_argument("--env", required=True)
    render_parser.add_argument("--account", required=True)
    render_parser.add_argument("--outputs", type=Path, action="append", default=[])
    render_parser.add_argument(
        "--digest", action="append", default=[], help="repository=sha256:... (gateway, tritonserver, k8s-device-plugin)"
    )
    render_parser.add_argument("--app", action="append", choices=APPS, help="default: all")
    render_parser.add_argument("--repo-url", default="", help="https://github.com/<owner>/<name>.git: what Argo CD follows")
    render_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "settings":
            print("\n".join(settings_lines(args.env)))
        elif args.command == "image-repositories":
            print("\n".join(image_repositories(args.repository)))
        elif args.command == "built-images":
            print("\n".join(built_images(args.template)))
        elif args.command == "upstream-images":
            print("\n".join(f"{repo}={image}" for repo, image in upstream_images().items()))
        else:
            digests = dict(d.split("=", 1) for d in args.digest)
            outputs = load_outputs(args.outputs)
            for app in args.app or APPS:
                rendered = render(args.env, app, args.account, digests, outputs, args.repo_url)
                (args.out / app).mkdir(parents=True, exist_ok=True)
                (args.out / app / "manifests.yaml").write_text(rendered)
    except RenderError as e:
        print(f"deliver: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
