"""The Triton-on-EKS manifests: valid against the Kubernetes schemas (offline) and wired to each other."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="requirements-triton.txt")

K8S = Path(__file__).resolve().parents[2] / "services" / "triton" / "k8s"
BASE = K8S / "base"
CLUSTER = K8S / "cluster"
REPOSITORY = Path(__file__).resolve().parents[2] / "services" / "triton" / "model_repository"
PLATFORM = Path(__file__).resolve().parents[2] / "infra" / "platform.yaml"
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
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for doc in base_resources():
        validate(doc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("folder", [BASE, K8S / "overlays" / "cpu"], ids=["base", "cpu"])
def test_kustomize_build_is_valid(folder):
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(base_resources())
    for doc in docs:
        validate(doc)
    if folder.name == "cpu":
        assert "nvidia.com/gpu" not in yaml.safe_dump(one("Deployment", docs)["spec"]["template"]["spec"])
        args = one("Deployment", docs)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--allow-gpu-metrics=false" in args and "--allow-gpu-metrics=true" not in args
        assert not [a for a in args if a.startswith("--model-config-name")]  # the models' own config.pbtxt: KIND_CPU


def triton_container(docs: list[dict] | None = None) -> dict:
    containers = one("Deployment", docs)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def rendered(folder: Path) -> list[dict]:
    """kustomize's output for `folder` (kubectl kustomize), or base's files when kubectl is absent (base has no patches)."""
    if shutil.which("kubectl") is None:
        assert folder == BASE, "rendering an overlay needs kubectl"
        return base_resources()
    out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_gpu_build_serves_the_gpu_model_configs():
    """k8s/base is the GPU build: the configs it makes Triton load say KIND_GPU and configure TensorRT/CUDA."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    args = triton_container(rendered(BASE))["args"]
    (config_name,) = [a.split("=", 1)[1] for a in args if a.startswith("--model-config-name=")]
    loaded = [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")]
    assert "--model-control-mode=explicit" in args
    assert sorted(loaded) == sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt"))
    for model in loaded:
        path = REPOSITORY / model / "configs" / f"{config_name}.pbtxt"
        assert path.is_file(), f"{model}: Triton would fall back to config.pbtxt (KIND_CPU) on the GPU node"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"], model
        accelerators = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
        assert accelerators == ["tensorrt", "cuda"], model
        assert config.backend == "onnxruntime" and config.name == model
    # The GPU build runs where the GPUs are: one per pod, on the GPU node group only.
    pod = one("Deployment", rendered(BASE))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--allow-gpu-metrics=true" in args


def test_the_readme_describes_the_model_control_the_deployment_uses():
    readme = (K8S / "README.md").read_text()
    args = triton_container()["args"]
    mode = next(a.split("=", 1)[1] for a in args if a.startswith("--model-control-mode="))
    assert f"{mode} model control" in readme
    assert "--model-config-name=gpu" in readme


def test_deployment_runs_pinned_triton_from_s3_on_a_gpu():
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = triton_container()
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert "--model-repository=$(MODEL_REPOSITORY)" in container["args"]
    assert one("ConfigMap", [d for d in base_resources() if d["metadata"]["name"] == "triton-settings"])["data"][
        "MODEL_REPOSITORY"
    ].startswith("s3://")
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
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
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
    rules_cm = [d for d in base_resources() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "triton-prometheus-adapter-rules"]
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
    # The inference Lambda reaches Triton from inside the VPC the platform stack creates: the policy admits that VPC's
    # CIDR (it named 10.0.0.0/16, outside the platform's 10.10.0.0/16, so every call from the Lambda was dropped).
    from radstream.template import load_yaml

    vpc = load_yaml(PLATFORM)["Parameters"]["VpcCidr"]["Default"]
    assert [peer["ipBlock"]["cidr"] for peer in clients if "ipBlock" in peer] == [vpc]
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


def test_cluster_pieces_are_valid_and_match_the_gpu_node_group():
    """k8s/cluster (device plugin, monitoring namespace) against the schemas, and the GPU selectors against
    the node group's labels and taints in infra/platform.yaml."""
    from radstream.template import load_yaml

    listed = kustomization(CLUSTER)["resources"]
    assert set(listed) == {p.name for p in CLUSTER.glob("*.yaml")} - {"kustomization.yaml"}
    docs = [d for name in listed for d in load_documents(CLUSTER / name)]
    for doc in docs:
        validate(doc)
    if shutil.which("kubectl"):
        for doc in rendered(CLUSTER):
            validate(doc)
    plugin = one("DaemonSet", docs)["spec"]["template"]["spec"]
    node_groups = [r["Properties"] for r in load_yaml(PLATFORM)["Resources"].values() if r["Type"] == "AWS::EKS::Nodegroup"]
    (gpu_group,) = [g for g in node_groups if "NVIDIA" in g["AmiType"]]
    taints = [{"key": t["Key"], "operator": "Exists", "effect": {"NO_SCHEDULE": "NoSchedule"}[t["Effect"]]} for t in gpu_group["Taints"]]
    triton_pod = one("Deployment")["spec"]["template"]["spec"]
    for pod in (plugin, triton_pod):
        assert pod["nodeSelector"].items() <= gpu_group["Labels"].items()
        assert all(t in pod["tolerations"] for t in taints)
    assert (
        one("Namespace", docs)["metadata"]["name"]
        == one("ConfigMap", [d for d in base_resources() if d["metadata"]["name"] == "triton-prometheus-adapter-rules"])["metadata"][
            "namespace"
        ]
    )
    values = yaml.safe_load((K8S / "prometheus-values.yaml").read_text())
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    assert (
        adapter["prometheus"]["url"] == "http://prometheus-server.monitoring.svc"
        and values["server"]["persistentVolume"]["enabled"] is False
    )
