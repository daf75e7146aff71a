"""The Triton-on-EKS manifests: valid against the Kubernetes schemas (offline) and wired to each other."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="requirements-triton.txt")

K8S = Path(__file__).resolve().parents[1] / "k8s"
BASE = K8S / "base"
KUBERNETES_VERSION = "1.31"  # EKS standard support; the schemas ship inside kubernetes-validate
TRITON_LABELS = {"app.kubernetes.io/name": "triton"}


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def base_resources() -> list[dict]:
    docs = []
    for name in kustomization(BASE)["resources"]:
        docs.extend(load_documents(BASE / name))
    return docs


def one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs or base_resources()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")


def test_every_manifest_is_listed_and_valid():
    listed = set(kustomization(BASE)["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = {d["kind"] for d in base_resources()}
    assert kinds >= {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    for doc in base_resources():
        validate(doc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("folder", [BASE, K8S / "overlays" / "cpu"], ids=["base", "cpu"])
def test_kustomize_build_is_valid(folder):
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True,
                              text=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(base_resources())
    for doc in docs:
        validate(doc)
    if folder.name == "cpu":
        assert "nvidia.com/gpu" not in yaml.safe_dump(one("Deployment", docs)["spec"]["template"]["spec"])
        args = one("Deployment", docs)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--allow-gpu-metrics=false" in args and "--allow-gpu-metrics=true" not in args


def triton_container() -> dict:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def test_deployment_runs_pinned_triton_from_s3_on_a_gpu():
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = triton_container()
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert "--model-repository=$(MODEL_REPOSITORY)" in container["args"]
    assert one("ConfigMap", [d for d in base_resources() if d["metadata"]["name"] == "triton-settings"])[
        "data"]["MODEL_REPOSITORY"].startswith("s3://")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    sa = one("ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert deployment["spec"]["selector"]["matchLabels"] == TRITON_LABELS


def test_probes_use_triton_health_endpoints():
    container = triton_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_security_context_is_restricted():
    pod = one("Deployment")["spec"]["template"]["spec"]
    container = triton_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, Triton needs writable /tmp (the S3 copy) and /dev/shm.
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/dev/shm"}


def test_service_is_an_internal_load_balancer():
    service = one("Service")
    annotations = service["metadata"]["annotations"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert service["spec"]["selector"] == TRITON_LABELS
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}


def test_hpa_scales_the_deployment_on_queue_time_then_cpu():
    hpa = one("HorizontalPodAutoscaler")
    deployment = one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    metrics = hpa["spec"]["metrics"]
    pods = [m for m in metrics if m["type"] == "Pods"]
    assert [m["pods"]["metric"]["name"] for m in pods] == ["triton_queue_time_per_request_us"]
    assert pods[0]["pods"]["target"]["type"] == "AverageValue"
    cpu = [m for m in metrics if m["type"] == "Resource"]
    assert cpu and cpu[0]["resource"]["name"] == "cpu"
    assert cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] >= 2  # so that the PDB can always let one pod go


def test_adapter_rule_computes_queue_time_per_request():
    rules_cm = [d for d in base_resources()
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "triton-prometheus-adapter-rules"]
    assert len(rules_cm) == 1
    rules = yaml.safe_load(rules_cm[0]["data"]["config.yaml"])["rules"]
    rule = next(r for r in rules if r["name"]["as"] == "triton_queue_time_per_request_us")
    query = " ".join(rule["metricsQuery"].split())
    assert "rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])" in query
    assert "clamp_min(" in query and "rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])" in query
    assert query.index("nv_inference_queue_duration_us") < query.index("/ clamp_min(")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["existing"] == rules_cm[0]["metadata"]["name"]
    assert rules_cm[0]["metadata"]["namespace"] == "monitoring"


def test_pdb_and_network_policy_select_the_triton_pods():
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one("PodDisruptionBudget")
    policy = one("NetworkPolicy")
    for selector in (pdb["spec"]["selector"]["matchLabels"], policy["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < one("HorizontalPodAutoscaler")["spec"]["minReplicas"]

    rules = policy["spec"]["ingress"]
    by_port = {frozenset(p["port"] for p in rule["ports"]): rule["from"] for rule in rules}
    assert set(by_port) == {frozenset({8000, 8001}), frozenset({8002})}
    clients = by_port[frozenset({8000, 8001})]
    assert any("ipBlock" in peer and peer["ipBlock"]["cidr"] for peer in clients)
    scraper = by_port[frozenset({8002})]
    assert scraper[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    pod_annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["prometheus.io/port"] == "8002"


def test_everything_lives_in_the_triton_namespace_but_the_adapter_rules():
    namespace = one("Namespace")["metadata"]["name"]
    for doc in base_resources():
        if doc["kind"] == "Namespace":
            continue
        expected = "monitoring" if doc["metadata"]["name"] == "triton-prometheus-adapter-rules" else namespace
        assert doc["metadata"]["namespace"] == expected, doc["metadata"]["name"]
