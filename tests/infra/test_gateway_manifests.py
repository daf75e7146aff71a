"""The gateway-on-EKS manifests, offline as Triton's are (kubernetes-validate against the Kubernetes JSON schemas,
`kubectl kustomize` when present), and wired to each other, to the image, to the settings and to the stacks."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from radstream.template import load_yaml

# One cluster, one Kubernetes version and one schema check for every manifest on it: Triton's test's.
from tests.infra.test_triton_manifests import validate
from shared.settings import ENVIRONMENT, Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "services" / "gateway" / "k8s" / "base"
DOCKERFILE = ROOT / "services" / "gateway" / "Dockerfile"
PLATFORM = load_yaml(ROOT / "infra" / "platform.yaml")
TEMPLATE = load_yaml(ROOT / "template.yaml")
LABELS = {"app.kubernetes.io/name": "gateway"}


def resources() -> list[dict]:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    return [d for name in listed for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs if docs is not None else resources()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict:
    (gateway,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return gateway


def settings_of_configmap() -> dict[str, str]:
    return one("ConfigMap")["data"]


def test_every_manifest_is_listed_and_valid():
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert {d["kind"] for d in resources()} == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for doc in resources():
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == one("Namespace")["metadata"]["name"], doc["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_build_is_valid():
    rendered = subprocess.run(["kubectl", "kustomize", str(BASE)], check=True, capture_output=True, text=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(resources())
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "radstream"


def test_the_pod_is_restricted_non_root_and_read_only():
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # The image's own user (services/gateway/Dockerfile).
    uid = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text()).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid)
    sc = container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    resources_ = container()["resources"]
    assert resources_["requests"]["cpu"] and resources_["requests"]["memory"] and resources_["limits"]["memory"]
    assert {m["mountPath"] for m in container()["volumeMounts"]} == {"/etc/radstream/tls", "/tmp"}
    assert one("Deployment")["spec"]["selector"]["matchLabels"] == LABELS
    assert one("PodDisruptionBudget")["spec"]["minAvailable"] < one("Deployment")["spec"]["replicas"]


def test_the_configmap_is_valid_gateway_settings_with_tls_and_the_secret():
    data = settings_of_configmap()
    known = set(ENVIRONMENT.values()) | {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "PYTHONDONTWRITEBYTECODE"}
    assert set(data) <= known, set(data) - known
    settings = Settings.from_env(data)  # the gateway's own parsing: a typo fails here, not in the pod
    assert settings.backend == "aws" and settings.gateway_host == "0.0.0.0"
    assert settings.gateway_pseudonym_secret_arn and settings.gateway_pseudonym_key is None  # never a key in a ConfigMap
    # The TLS files are the mounted Secret's keys.
    (tls_mount,) = [m for m in container()["volumeMounts"] if m["name"] == "tls"]
    (tls_volume,) = [v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert tls_mount["readOnly"] is True and tls_volume["secret"]["secretName"] == "gateway-tls"
    assert settings.gateway_tls_cert_file == Path(tls_mount["mountPath"]) / "tls.crt"
    assert settings.gateway_tls_key_file == Path(tls_mount["mountPath"]) / "tls.key"
    # The container's ports are the settings' ports.
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {
        "dimse": settings.gateway_dimse_port,
        "dicom-tls": settings.gateway_dicom_tls_port,
        "https": settings.gateway_http_port,
    }
    # The liveness probe's C-ECHO calls as RADSTREAM-PROBE, which the allowed list must hold.
    assert "RADSTREAM-PROBE" in settings.gateway_allowed_ae_list
    assert data["AWS_ENDPOINT_URL_S3"].startswith("https://bucket.vpce-") and ".s3." in data["AWS_ENDPOINT_URL_S3"]
    # The secret's name is the one template.yaml gives it (any environment).
    name = TEMPLATE["Resources"]["GatewayPseudonymKey"]["Properties"]["Name"]["Fn::Sub"].replace("${EnvironmentName}", "[a-z]+")
    assert re.fullmatch(
        rf"arn:aws:secretsmanager:[a-z0-9-]+:\d{{12}}:secret:{name}-[A-Za-z0-9]{{6}}", settings.gateway_pseudonym_secret_arn
    )


def test_probes_use_health_over_https_and_a_c_echo():
    c = container()
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "https", "scheme": "HTTPS"}
    assert c["livenessProbe"]["exec"]["command"] == ["python", "-m", "services.gateway.probe"]
    assert (ROOT / "services" / "gateway" / "probe.py").is_file()
    assert c["command"] == ["python", "-m", "services.gateway.server"]
    assert c["livenessProbe"]["timeoutSeconds"] >= 5


def test_the_service_is_an_internal_nlb_for_dimse_and_https_passing_tls_through():
    service = one("Service")
    annotations = service["metadata"]["annotations"]
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["selector"] == LABELS
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"
    assert "preserve_client_ip.enabled=true" in annotations["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"]
    assert "service.beta.kubernetes.io/aws-load-balancer-ssl-cert" not in annotations  # TLS ends in the pod, not the NLB
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/health"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol"] == "HTTPS"
    ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {104: "dimse", 11112: "dimse", 2762: "dicom-tls", 443: "https"}
    container_ports = {p["name"] for p in container()["ports"]}
    assert set(ports.values()) <= container_ports
    assert int(annotations["service.beta.kubernetes.io/aws-load-balancer-healthcheck-port"]) == next(
        p["containerPort"] for p in container()["ports"] if p["name"] == "https"
    )


def test_network_policy_admits_the_hospital_and_reaches_only_dns_and_the_endpoints():
    policy = one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == LABELS
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    hospital = one("Service")["spec"]["loadBalancerSourceRanges"]
    vpc = PLATFORM["Parameters"]["VpcCidr"]["Default"]
    container_ports = {p["containerPort"] for p in container()["ports"]}
    ingress = {
        frozenset(p["port"] for p in rule["ports"]): [peer["ipBlock"]["cidr"] for peer in rule["from"]]
        for rule in policy["spec"]["ingress"]
    }
    assert ingress == {frozenset(container_ports): hospital, frozenset({8443}): [vpc]}
    for peers in ingress.values():
        assert all(ipaddress.ip_network(c).prefixlen >= 8 for c in peers)  # never "anywhere"
    egress = policy["spec"]["egress"]
    dns, endpoints = egress
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert endpoints == {"to": [{"ipBlock": {"cidr": vpc}}], "ports": [{"protocol": "TCP", "port": 443}]}
    # The VPC's interface endpoints the gateway calls exist in the platform stack.
    services = {
        r["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[-1]: r["Properties"]
        for r in PLATFORM["Resources"].values()
        if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"]["VpcEndpointType"] == "Interface"
    }
    assert {"secretsmanager", "sts", "s3"} <= set(services)


def test_the_service_account_is_the_one_the_irsa_role_trusts():
    sa = one("ServiceAccount")
    trust = TEMPLATE["Resources"]["GatewayUploaderRole"]["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"][0]
    assert f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}" in trust
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert sa["automountServiceAccountToken"] is False
