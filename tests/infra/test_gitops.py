"""GitOps for the EKS parts: what `infra/deliver.py render` writes for Argo CD in each environment. The Argo CD and Argo
Rollouts objects are validated against the schemas of their Go API types (npm's @kubernetes-models/argo-cd and
argo-rollouts, generated from argoproj's pkg/apis v1alpha1: types and enums, not unknown keys), and structurally here:
what follows what, which metrics decide a rollback, and that the pieces name each other."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, node_json, npm_install
from .test_kubernetes import ENVIRONMENTS, REPO_URL, rendered  # noqa: F401 - the module fixture

ARGO_MODELS = ("@kubernetes-models/argo-cd@4.0.0", "@kubernetes-models/argo-rollouts@2.0.0")
PROMETHEUS = yaml.safe_load((ROOT / "services/triton/k8s/prometheus-adapter-values.yaml").read_text())["prometheus"]["url"]

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")


def documents(out: Path, app: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((out / app / "manifests.yaml").read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)}"
    return found[0]


def argo_validate(docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    assert shutil.which("node") and shutil.which("npm"), "node and npm validate the Argo objects against their published schemas"
    error = npm_install(ARGO_MODELS)
    assert error is None, f"could not install {ARGO_MODELS} from the npm registry: {error}"
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    return node_json(Path(__file__).with_name("argo_validate.mjs"), "ARGO_NPM_DIR", str(tmp_path / "docs.json"))


def argo_objects(out: Path) -> list[dict[str, Any]]:
    return [d for app in ("argocd", "triton") for d in documents(out, app) if d["apiVersion"].startswith("argoproj.io/")]


def test_the_argo_objects_match_their_schemas(rendered, tmp_path):  # noqa: F811 - the fixture from test_kubernetes
    docs = [d for out in rendered.values() for d in argo_objects(out)]
    assert {d["kind"] for d in docs} == {"Application", "AppProject", "Rollout", "AnalysisTemplate"}
    assert not argo_validate(docs, tmp_path)


def test_the_schema_check_catches_a_broken_rollout(rendered, tmp_path):  # noqa: F811 - the fixture from test_kubernetes
    rollout = one(documents(rendered["dev"], "triton"), "Rollout")
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "a quarter"
    (error,) = argo_validate([rollout], tmp_path)
    assert "setWeight" in error


def test_each_environment_has_its_applications_following_its_branch(rendered):  # noqa: F811 - the fixture from test_kubernetes
    for env, out in rendered.items():
        docs = documents(out, "argocd")
        project = one(docs, "AppProject", "radstream")
        assert project["spec"]["sourceRepos"] == [REPO_URL]
        apps = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Application"}
        # Every folder render writes is one Application's path; radstream-apps holds the Applications themselves.
        assert sorted(a["source"]["path"] for a in apps.values()) == sorted(p.name for p in out.iterdir())
        for name, spec in apps.items():
            assert spec["project"] == "radstream" and spec["source"]["repoURL"] == REPO_URL, name
            assert spec["source"]["targetRevision"] == f"gitops/{env}", name
            assert spec["destination"]["server"] == "https://kubernetes.default.svc"
            assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}, name


def test_the_project_admits_exactly_what_the_applications_deploy(rendered):  # noqa: F811 - the fixture from test_kubernetes
    for env, out in rendered.items():
        project = one(documents(out, "argocd"), "AppProject")["spec"]
        namespaces = {d["namespace"] for d in project["destinations"]}
        cluster_kinds = {(k["group"], k["kind"]) for k in project["clusterResourceWhitelist"]}
        namespaced_kinds = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
        for app in ("cluster", "triton", "gateway", "argocd"):
            for doc in documents(out, app):
                group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
                if doc["kind"] == "Namespace":
                    assert (group, "Namespace") in cluster_kinds and doc["metadata"]["name"] in namespaces
                else:
                    assert (group, doc["kind"]) in namespaced_kinds, (env, app, doc["kind"])
                    assert doc["metadata"]["namespace"] in namespaces, (env, app, doc["metadata"])


def test_triton_rolls_out_progressively_and_aborts_on_its_own_metrics(rendered):  # noqa: F811 - the fixture from test_kubernetes
    for out in rendered.values():
        docs = documents(out, "triton")
        deployment, rollout = one(docs, "Deployment", "triton"), one(docs, "Rollout", "triton")
        spec = rollout["spec"]
        # The Rollout runs the Deployment's pod template; the Deployment keeps no pods; the HPA scales the Rollout.
        assert spec["workloadRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton", "scaleDown": "progressively"}
        assert deployment["spec"]["replicas"] == 0 and "replicas" not in spec
        assert spec["selector"] == deployment["spec"]["selector"]
        assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"] == {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "name": "triton",
        }
        canary = spec["strategy"]["canary"]
        weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
        assert weights == sorted(weights) and weights[0] < 50 and weights[-1] == 100
        assert canary["maxUnavailable"] == 0
        assert [s for s in canary["steps"] if "pause" in s and "duration" not in s["pause"]] == []  # no step waits for a person
        # Background analysis over the whole rollout, on the new pods only.
        (reference,) = canary["analysis"]["templates"]
        assert canary["analysis"]["startingStep"] == 1
        template = one(docs, "AnalysisTemplate", reference["templateName"])["spec"]
        assert {a["name"] for a in canary["analysis"]["args"]} == {a["name"] for a in template["args"]}
        assert canary["analysis"]["args"] == [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]
        metrics = {m["name"]: m for m in template["metrics"]}
        queries = {name: m["provider"]["prometheus"]["query"] for name, m in metrics.items()}
        assert "nv_inference_request_failure" in queries["error-rate"] and "nv_inference_request_success" in queries["error-rate"]
        assert "nv_inference_request_duration_us" in queries["request-latency-ms"]
        for name, metric in metrics.items():
            query = queries[name]
            assert metric["provider"]["prometheus"]["address"] == PROMETHEUS, name  # the Prometheus the HPA reads
            assert query.count("(") == query.count(")"), name
            # Every series selector names the canary's pods by their template hash, in Triton's namespace.
            selectors = re.findall(r"nv_inference_\w+\{([^}]*)\}", query.replace("{{args.canary-hash}}", "HASH"))
            assert selectors and all('pod=~"triton-HASH-.*"' in s and 'namespace="radstream-triton"' in s for s in selectors), name
            assert re.fullmatch(r"result\[0\] <= [\d.]+", metric["successCondition"]) and metric["failureLimit"] <= 2, name
            assert query.rstrip().endswith("or vector(0)"), name  # an idle canary reads healthy, not inconclusive


def test_the_triton_namespace_admits_the_rollouts_analysis():
    """The analysis queries Prometheus, which scrapes Triton's metrics port; the NetworkPolicy admits Prometheus there."""
    policy = yaml.safe_load((ROOT / "services/triton/k8s/base/networkpolicy.yaml").read_text())
    metrics_rule = next(r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {8002})
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert "monitoring.svc" in PROMETHEUS
