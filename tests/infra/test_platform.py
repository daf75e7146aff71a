"""infra/platform.yaml, offline: cfn-lint, checkov, and what template.yaml and the Triton manifests rely on
(the exports the SAM stack imports, endpoint policies limited to RadStream's resources, node groups, add-ons, IRSA)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, TEMPLATE, assert_cloudformation_skips_say_why, checkov_passes
from .test_template import as_list, statements

PLATFORM = ROOT / "infra" / "platform.yaml"
DOC = load_yaml(PLATFORM)
RESOURCES: dict[str, dict[str, Any]] = DOC["Resources"]
APP = load_yaml(TEMPLATE)["Resources"]


def of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == kind}


def endpoints() -> dict[str, dict[str, Any]]:
    """service suffix (s3, kinesis-streams, ...) -> endpoint properties; the gateway's S3 interface endpoint is
    "s3 (gateway pods)", the S3 gateway endpoint everything else uses "s3"."""
    return {
        p["ServiceName"]["Fn::Sub"].split("}.", 1)[1] + (" (gateway pods)" if name == "GatewayS3Endpoint" else ""): p
        for name, p in of_type("AWS::EC2::VPCEndpoint").items()
    }


def test_cfn_lint_finds_no_errors():
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(PLATFORM, config=ManualArgs(regions=["eu-west-1", "us-east-1"]))
    errors = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches if m.rule.severity == "error"]
    assert not errors, "\n".join(errors)


def test_checkov_passes_and_every_skip_is_justified(infra_python: Path, tmp_path: Path):
    checkov_passes(infra_python, tmp_path, "-f", str(PLATFORM), "--framework", "cloudformation", timeout=300, more_than=30)
    assert_cloudformation_skips_say_why(RESOURCES, longer_than=20)


def test_the_exports_are_what_template_yaml_imports():
    imported = set(re.findall(r"\$\{PlatformStackName\}-(\w+)", TEMPLATE.read_text()))
    exported = {o["Export"]["Name"]["Fn::Sub"].split("-", 1)[1] for o in DOC["Outputs"].values() if "Export" in o}
    assert imported and imported <= exported, imported - exported


def test_the_endpoints_the_workloads_need_without_a_nat():
    found = endpoints()
    assert {"s3", "kinesis-streams", "glue", "athena", "ecr.api", "ecr.dkr", "sts", "logs", "secretsmanager", "s3 (gateway pods)"} <= set(
        found
    )
    assert found["s3"]["VpcEndpointType"] == "Gateway"
    for service, props in found.items():
        assert props.get("PolicyDocument"), f"{service}: no endpoint policy (full access)"
        if props["VpcEndpointType"] == "Interface":
            # The gateway pods' S3 endpoint has no private DNS: S3's names keep resolving to the gateway endpoint.
            assert props["PrivateDnsEnabled"] is (service != "s3 (gateway pods)"), service
            assert props["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]
    (ingress,) = RESOURCES["EndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"]) == (443, 443) and "0.0.0.0/0" not in json.dumps(ingress)
    assert "PrivateDefaultRoute" in RESOURCES and RESOURCES["PrivateDefaultRoute"]["Condition"] == "CreateNat"


def names(resource: str, prop: str) -> str:
    """A name template.yaml gives a resource, in the ${...} form the endpoint policies spell it."""
    value = APP[resource]["Properties"]
    for key in prop.split("."):
        value = value[key]
    return value["Fn::Sub"] if isinstance(value, dict) else value


def test_data_endpoint_policies_admit_only_radstream_resources():
    """The S3, Kinesis, Glue and Athena endpoints name exactly the buckets, stream, database and workgroup
    template.yaml creates (ECR's layer bucket aside); a renamed resource there fails here."""
    found = endpoints()
    resources = {
        service: {json.dumps(r) for s in found[service]["PolicyDocument"]["Statement"] for r in as_list(s["Resource"])}
        for service in ("s3", "kinesis-streams", "glue", "athena")
    }
    for bucket in ("ImagesBucket", "ResultsBucket", "TelemetryBucket", "ArtifactsBucket"):
        name = names(bucket, "BucketName")
        assert any(name in r for r in resources["s3"]), bucket
    s3_rest = [
        r
        for r in resources["s3"]
        if not any(names(b, "BucketName") in r for b in ("ImagesBucket", "ResultsBucket", "TelemetryBucket", "ArtifactsBucket"))
    ]
    assert s3_rest == [json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::prod-${AWS::Region}-starport-layer-bucket/*"})]
    assert all(names("TelemetryStream", "Name") in r for r in resources["kinesis-streams"])
    database = names("GlueDatabase", "DatabaseInput.Name")
    assert all(r.endswith(':catalog"}') or database in r for r in resources["glue"])
    assert all(names("AthenaWorkGroup", "Name") in r for r in resources["athena"])
    for service in ("s3", "kinesis-streams", "glue", "athena"):
        assert all(
            s["Effect"] == "Allow" and "*" not in json.dumps(s["Action"]).replace(":*", "")
            for s in found[service]["PolicyDocument"]["Statement"]
        )


def test_no_statement_allows_every_action_and_every_resource_star_says_why():
    allowed = [s for s in statements(DOC) if s.get("Effect") == "Allow"]
    assert allowed and not [s for s in allowed if "*" in as_list(s.get("Action", [])) or s.get("NotAction")]
    lines = PLATFORM.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.search(r"""Resource:\s*["']\*["']""", line):
            assert "#" in line, f'platform.yaml:{number + 1}: Resource "*" without a comment saying why'
    for statement in allowed:
        if statement.get("Resource") == "*" and statement.get("Principal") == "*":
            assert statement["Condition"]["StringEquals"]["aws:PrincipalAccount"] == {"Ref": "AWS::AccountId"}, statement


def test_node_groups_cpu_and_gpu_across_two_azs():
    groups = of_type("AWS::EKS::Nodegroup")
    by_type = {g["InstanceTypes"][0]: g for g in groups.values()}
    assert set(by_type) == {"t3.medium", "g4dn.xlarge"}
    gpu = by_type["g4dn.xlarge"]
    assert gpu["AmiType"] == "AL2023_x86_64_NVIDIA" and gpu["Labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["Taints"] == [{"Key": "nvidia.com/gpu", "Value": "true", "Effect": "NO_SCHEDULE"}]
    two_azs = {"Fn::If": ["CreateVpc", [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}], {"Ref": "ExistingPrivateSubnetIds"}]}
    azs = {RESOURCES[s]["Properties"]["AvailabilityZone"]["Fn::Select"][0] for s in ("PrivateSubnetA", "PrivateSubnetB")}
    assert azs == {0, 1}
    for group in groups.values():
        assert group["Subnets"] == two_azs
        template = RESOURCES[group["LaunchTemplate"]["Id"]["Ref"]]["Properties"]["LaunchTemplateData"]
        assert template["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
        assert all(d["Ebs"]["Encrypted"] for d in template["BlockDeviceMappings"])
        for spec in template["TagSpecifications"]:
            assert {"project", "environment", "data-classification"} <= {t["Key"] for t in spec["Tags"]}, spec["ResourceType"]


def test_cluster_is_private_encrypted_logged_with_irsa_and_the_add_ons():
    cluster = RESOURCES["Cluster"]["Properties"]
    assert cluster["ResourcesVpcConfig"]["EndpointPrivateAccess"] is True
    assert cluster["ResourcesVpcConfig"]["EndpointPublicAccess"] == {"Fn::If": ["PublicApi", True, False]}
    assert cluster["EncryptionConfig"][0]["Resources"] == ["secrets"]
    assert {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]} >= {"api", "audit", "authenticator"}
    assert of_type("AWS::IAM::OIDCProvider")["OidcProvider"]["Url"] == {"Fn::GetAtt": ["Cluster", "OpenIdConnectIssuerUrl"]}
    addons = {a["AddonName"]: a for a in of_type("AWS::EKS::Addon").values()}
    assert {"vpc-cni", "coredns", "kube-proxy", "metrics-server"} <= set(addons)
    assert addons["vpc-cni"]["ServiceAccountRoleArn"] == {"Fn::GetAtt": ["VpcCniRole", "Arn"]}
    # Without it the CNI ignores k8s/base/networkpolicy.yaml.
    assert json.loads(addons["vpc-cni"]["ConfigurationValues"])["enableNetworkPolicy"] == "true"
    node_policies = json.dumps(RESOURCES["NodeRole"]["Properties"]["ManagedPolicyArns"])
    assert "AmazonEKS_CNI_Policy" not in node_policies  # pods must not borrow the CNI's rights from the node


def test_irsa_trust_policies_render_to_valid_json():
    """The IRSA trust policies are strings (their condition keys name the issuer): substituted, they parse,
    and Triton's names the service account that k8s/base/serviceaccount.yaml defines."""
    issuer = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
    values = {
        "AWS::Partition": "aws",
        "AWS::AccountId": "123456789012",
        "Issuer": issuer,
        "OidcProvider": f"arn:aws:iam::123456789012:oidc-provider/{issuer}",
    }
    import yaml

    account = yaml.safe_load((ROOT / "services/triton/k8s/base/serviceaccount.yaml").read_text())["metadata"]
    charts = {
        name: yaml.safe_load((ROOT / "services/triton/k8s" / f"{name}-values.yaml").read_text())
        for name in ("aws-load-balancer-controller", "cluster-autoscaler")
    }
    lbc = charts["aws-load-balancer-controller"]["serviceAccount"]["name"]
    autoscaler = charts["cluster-autoscaler"]["rbac"]["serviceAccount"]["name"]
    for role, _resources, expected_subject in (
        (RESOURCES["VpcCniRole"], RESOURCES, "system:serviceaccount:kube-system:aws-node"),
        (RESOURCES["LoadBalancerControllerRole"], RESOURCES, f"system:serviceaccount:kube-system:{lbc}"),
        (RESOURCES["ClusterAutoscalerRole"], RESOURCES, f"system:serviceaccount:kube-system:{autoscaler}"),
        (APP["TritonModelReaderRole"], APP, f"system:serviceaccount:{account['namespace']}:{account['name']}"),
    ):
        body, _ = role["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"]
        rendered = json.loads(re.sub(r"\$\{([\w:]+)\}", lambda m: values[m.group(1)], body))
        (statement,) = rendered["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Condition"]["StringEquals"] == {f"{issuer}:sub": expected_subject, f"{issuer}:aud": "sts.amazonaws.com"}


def test_the_walk_through_names_every_step():
    """README and docs/deployment.md name each step of the deployment, in order."""
    steps = [
        "sam deploy --config-env dev-platform",
        "kubectl apply -k services/triton/k8s/cluster",
        "sam build && sam deploy --config-env dev",
        "update-cost-allocation-tags-status",
        "aws s3 sync services/triton/model_repository",
        "aws-load-balancer-controller",
        "kubectl apply -k services/triton/k8s/base",
        "prometheus-values.yaml",
        "prometheus-adapter-values.yaml",
        "TritonUrl=",
    ]
    for path in (ROOT / "README.md", ROOT / "docs" / "deployment.md"):
        text = path.read_text()
        positions = [text.find(step) for step in steps]
        assert -1 not in positions, [s for s, p in zip(steps, positions) if p == -1]
        assert positions == sorted(positions), path.name
    doc = (ROOT / "docs" / "deployment.md").read_text()
    assert "2026-12-03" in doc and "not fetched live" in doc and "## Releases and rollback" in doc


def test_the_controllers_change_only_this_clusters_resources():
    """The load balancer controller and the autoscaler may write only to resources tagged for this cluster."""
    for role, tag in (("LoadBalancerControllerRole", "elbv2.k8s.aws/cluster"), ("ClusterAutoscalerRole", "eks:cluster-name")):
        (policy,) = RESOURCES[role]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            writes = [a for a in actions if not a.split(":", 1)[1].startswith(("Describe", "Get", "List"))]
            if writes and statement["Resource"] == "*":
                (condition,) = statement["Condition"].values()
                assert any(key.endswith(tag) for key in condition), (role, statement["Sid"])
    groups = of_type("AWS::EKS::Nodegroup")
    assert all(g["Tags"]["k8s.io/cluster-autoscaler/enabled"] == "true" for g in groups.values())
    # One GPU per Triton pod: the GPU group can grow to the HPA's maximum, and holds its minimum in prod.
    import yaml

    hpa = yaml.safe_load((ROOT / "services/triton/k8s/base/hpa.yaml").read_text())["spec"]
    scaling = RESOURCES["GpuNodeGroup"]["Properties"]["ScalingConfig"]
    assert scaling["MaxSize"] == {"Ref": "GpuNodesMax"} and DOC["Parameters"]["GpuNodesMax"]["Default"] >= hpa["maxReplicas"]
    import tomllib

    prod = dict(
        i.split("=", 1)
        for i in tomllib.loads((ROOT / "samconfig.toml").read_text())["prod-platform"]["deploy"]["parameters"]["parameter_overrides"]
    )
    assert int(prod["GpuNodesMin"]) >= hpa["minReplicas"] and int(prod["GpuNodesMax"]) >= hpa["maxReplicas"]
