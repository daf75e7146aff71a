"""infra/terraform: infra/platform.yaml as a Terraform module, held equal to it (the same resources, variables, outputs
and key properties) by parsing both, and 0 failed in checkov's Terraform checks (each skip with its reason)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from radstream.template import load_yaml

from .conftest import ROOT, checkov_passes, run_captured

TERRAFORM = ROOT / "infra" / "terraform"
CFN = load_yaml(ROOT / "infra" / "platform.yaml")
RESOURCES: dict[str, dict[str, Any]] = CFN["Resources"]
TYPES = {  # CloudFormation type -> Terraform type
    "AWS::EC2::VPC": "aws_vpc",
    "AWS::Logs::LogGroup": "aws_cloudwatch_log_group",
    "AWS::IAM::Role": "aws_iam_role",
    "AWS::EC2::FlowLog": "aws_flow_log",
    "AWS::EC2::InternetGateway": "aws_internet_gateway",
    "AWS::EC2::Subnet": "aws_subnet",
    "AWS::EC2::RouteTable": "aws_route_table",
    "AWS::EC2::Route": "aws_route",
    "AWS::EC2::SubnetRouteTableAssociation": "aws_route_table_association",
    "AWS::EC2::EIP": "aws_eip",
    "AWS::EC2::NatGateway": "aws_nat_gateway",
    "AWS::KMS::Key": "aws_kms_key",
    "AWS::KMS::Alias": "aws_kms_alias",
    "AWS::EC2::SecurityGroup": "aws_security_group",
    "AWS::EC2::VPCEndpoint": "aws_vpc_endpoint",
    "AWS::ECR::PullThroughCacheRule": "aws_ecr_pull_through_cache_rule",
    "AWS::EKS::Cluster": "aws_eks_cluster",
    "AWS::IAM::OIDCProvider": "aws_iam_openid_connect_provider",
    "AWS::EC2::SecurityGroupIngress": "aws_security_group_rule",
    "AWS::EC2::LaunchTemplate": "aws_launch_template",
    "AWS::EKS::Nodegroup": "aws_eks_node_group",
    "AWS::EKS::Addon": "aws_eks_addon",
    "AWS::S3::Bucket": "aws_s3_bucket",
    "AWS::S3::BucketPolicy": "aws_s3_bucket_policy",
}
# Where Terraform spells one CloudFormation resource differently.
FOLDED = {"InternetGatewayAttachment": "aws_internet_gateway.internet_gateway"}  # aws_internet_gateway's vpc_id attaches it
# Terraform only: what CloudFormation cannot express or keeps inside another resource.
TERRAFORM_ONLY = {
    "aws_default_security_group.default",
    "aws_iam_role_policy.vpc_flow_log_role",
    *(f"aws_iam_role_policy.controller_role[{c}]" for c in ("load_balancer_controller", "cluster_autoscaler")),
    "aws_iam_role_policy.velero_role",
    # a CloudFormation bucket's properties are separate resources in the AWS provider
    *(
        f"aws_s3_bucket_{part}.cluster_backup_bucket"
        for part in ("server_side_encryption_configuration", "public_access_block", "ownership_controls", "lifecycle_configuration")
    ),
}


def snake(name: str) -> str:
    """PublicSubnetARouteTable -> public_subnet_a_route_table."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()


def quoted(text: str, word: str) -> bool:
    """word as a string literal in an expression the parser gives back (jsonencode's object, in either quote)."""
    return re.search(rf"""['"]{re.escape(word)}['"]""", text) is not None


def value(block: dict[str, Any], key: str) -> Any:
    """bc-python-hcl2 wraps each attribute in a list."""
    found = block[key]
    return found[0] if isinstance(found, list) and len(found) == 1 else found


@pytest.fixture(scope="module")
def hcl(infra_python: Path) -> dict[str, Any]:
    result = run_captured([str(infra_python), str(Path(__file__).with_name("hcl_to_json.py")), str(TERRAFORM)], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout)
    merged: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "locals": {}}
    for doc in parsed.values():
        for entry in doc.get("resource", []):
            for kind, named in entry.items():
                for name, body in named.items():
                    merged["resource"][f"{kind}.{name}"] = body
        for kind in ("variable", "output"):
            for entry in doc.get(kind, []):
                merged[kind].update(entry)
        for entry in doc.get("locals", []):
            merged["locals"].update(entry)
    return merged


def interface_services() -> dict[str, dict[str, Any]]:
    return {
        p["ServiceName"]["Fn::Sub"].split("}.", 1)[1]: p
        for name, r in RESOURCES.items()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
        and (p := r["Properties"])["VpcEndpointType"] == "Interface"
        and p["PrivateDnsEnabled"] is True
    }


# Resources written once with for_each: the local whose keys are their instances (the interface endpoints by service,
# the subnets and their route table associations by infra/platform.yaml's names, the route tables by tier).
FOR_EACH = {
    "aws_vpc_endpoint.interface": "interface_endpoints",
    "aws_subnet.subnet": "subnets",
    "aws_route_table_association.subnet_route_table": "subnets",
    "aws_route_table.route_table": ("public", "private"),
    "aws_eks_node_group.node_group": "node_groups",
    "aws_launch_template.node_launch_template": "node_groups",
    "aws_iam_role.controller_role": "controller_roles",
    "aws_iam_role_policy.controller_role": "controller_roles",
    "aws_eks_addon.pod_addon": "pod_addons",
}
CONTROLLER_ROLES = {"LoadBalancerControllerRole", "ClusterAutoscalerRole"}  # aws_iam_role.controller_role's


def address(name: str, resource: dict[str, Any]) -> str:
    if name in FOLDED:
        return FOLDED[name]
    kind = resource["Type"]
    if kind == "AWS::EC2::VPCEndpoint" and name not in ("S3Endpoint", "GatewayS3Endpoint"):
        service = resource["Properties"]["ServiceName"]["Fn::Sub"].split("}.", 1)[1]
        return f"aws_vpc_endpoint.interface[{service}]"
    if kind == "AWS::EC2::Subnet":
        return f"aws_subnet.subnet[{snake(name)}]"
    if kind == "AWS::EC2::SubnetRouteTableAssociation":  # PublicSubnetARouteTable: public_subnet_a's
        return f"aws_route_table_association.subnet_route_table[{snake(name).removesuffix('_route_table')}]"
    if kind == "AWS::EC2::RouteTable":  # PublicRouteTable: the public tier's
        return f"aws_route_table.route_table[{snake(name).removesuffix('_route_table')}]"
    if kind == "AWS::EKS::Addon" and resource["Properties"]["AddonName"] in ("coredns", "metrics-server"):
        return f"aws_eks_addon.pod_addon[{resource['Properties']['AddonName']}]"
    if name in CONTROLLER_ROLES:
        return f"aws_iam_role.controller_role[{snake(name).removesuffix('_role')}]"
    if kind == "AWS::EKS::Nodegroup":  # CpuNodeGroup: local.node_groups' cpu
        return f"aws_eks_node_group.node_group[{snake(name).removesuffix('_node_group')}]"
    if kind == "AWS::EC2::LaunchTemplate":
        return f"aws_launch_template.node_launch_template[{snake(name).removesuffix('_node_launch_template')}]"
    return f"{TYPES[kind]}.{snake(name)}"


def block(hcl: dict[str, Any], instance: str) -> dict[str, Any]:
    """The resource block of an address, aws_subnet.subnet[public_subnet_a]'s being aws_subnet.subnet."""
    return hcl["resource"][instance.split("[", 1)[0]]


def attribute(hcl: dict[str, Any], instance: str, *path: str) -> Any:
    """An attribute of a resource (path: nested blocks, then the attribute), a for_each resource's each.key and
    each.value.<name> read from its instance's key and its local."""
    found: Any = block(hcl, instance)
    for name in path:
        found = value(found, name)
    if "[" in instance and isinstance(found, str):
        key = instance.split("[", 1)[1].rstrip("]")
        if found == "${each.key}":
            return key
        if match := re.fullmatch(r"\$\{each\.value\.(\w+)\}", found):
            return value(hcl["locals"], FOR_EACH[instance.split("[", 1)[0]])[key][match.group(1)]
    return found


def instances(hcl: dict[str, Any]) -> set[str]:
    """Every resource address, a for_each resource's one per key."""
    found = set(hcl["resource"]) - set(FOR_EACH)
    for resource, keys in FOR_EACH.items():
        found |= {f"{resource}[{k}]" for k in (value(hcl["locals"], keys) if isinstance(keys, str) else keys)}
    return found


def test_the_same_resources(hcl):
    expected = {address(n, r) for n, r in RESOURCES.items()}
    found = instances(hcl)
    assert found - TERRAFORM_ONLY == expected, {
        "only in terraform": found - TERRAFORM_ONLY - expected,
        "only in cloudformation": expected - found,
    }
    # Conditional resources are conditional in both: CreateVpc/CreateNat -> count, or for_each over nothing.
    for name, resource in RESOURCES.items():
        if "Condition" in resource and name not in FOLDED:
            written = block(hcl, address(name, resource))
            condition = value(written, "count") if "count" in written else value(written, "for_each")
            if condition == "${aws_subnet.subnet}":  # one association per subnet: as conditional as the subnets
                condition = value(hcl["resource"]["aws_subnet.subnet"], "for_each")
            assert {"CreateVpc": "local.create_vpc", "CreateNat": "local.create_nat"}[resource["Condition"]] in condition, name


def test_the_same_variables_and_outputs(hcl):
    for name, parameter in CFN["Parameters"].items():
        variable = hcl["variable"][snake(name)]
        default = value(variable, "default")
        expected = parameter.get("Default")
        if parameter["Type"] == "CommaDelimitedList":
            assert default == [], name
        elif expected in ("true", "false"):
            assert default is (expected == "true"), name
        else:
            assert str(default) == str(expected), name
    assert {snake(n) for n in CFN["Outputs"]} <= set(hcl["output"])
    # The outputs template.yaml needs from a platform stack, including what CloudFormation cannot output itself.
    assert {"endpoint_security_group_id", "s3_prefix_list_id", "oidc_issuer", "private_subnet_ids"} <= set(hcl["output"])


def statements_summary(statements: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((s["Sid"], tuple(sorted(s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))) for s in statements)


def test_the_same_endpoints_and_policies(hcl):
    tf_interface = value(hcl["locals"], "interface_endpoints")
    cfn = interface_services()
    assert set(tf_interface) == set(cfn)
    for service, props in cfn.items():
        tf_statements = tf_interface[service]
        if isinstance(tf_statements, str):  # a reference to a shared local (local.ecr_pull)
            tf_statements = value(hcl["locals"], tf_statements.strip("${}").split(".", 1)[1])
        assert statements_summary(tf_statements) == statements_summary(props["PolicyDocument"]["Statement"]), service
    gateway = hcl["resource"]["aws_vpc_endpoint.gateway_s3_endpoint"]
    assert value(gateway, "private_dns_enabled") is False and value(gateway, "vpc_endpoint_type") == "Interface"
    assert value(hcl["resource"]["aws_vpc_endpoint.s3_endpoint"], "vpc_endpoint_type") == "Gateway"
    for name in ("S3Endpoint", "GatewayS3Endpoint"):
        policy = value(hcl["resource"][address(name, RESOURCES[name])], "policy")
        for statement in RESOURCES[name]["Properties"]["PolicyDocument"]["Statement"]:
            assert quoted(policy, statement["Sid"]), (name, statement["Sid"])


def test_the_same_cluster_nodes_and_add_ons(hcl):
    res = hcl["resource"]
    cluster = RESOURCES["Cluster"]["Properties"]
    tf_cluster = res["aws_eks_cluster.cluster"]
    assert value(value(tf_cluster, "vpc_config"), "endpoint_private_access") is True
    assert value(tf_cluster, "enabled_cluster_log_types") == [t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]]
    assert value(value(tf_cluster, "encryption_config"), "resources") == cluster["EncryptionConfig"][0]["Resources"]
    assert value(value(tf_cluster, "access_config"), "authentication_mode") == cluster["AccessConfig"]["AuthenticationMode"]
    for group in ("CpuNodeGroup", "GpuNodeGroup"):
        cfn, tf = RESOURCES[group]["Properties"], address(group, RESOURCES[group])
        assert attribute(hcl, tf, "instance_types") == cfn["InstanceTypes"] and attribute(hcl, tf, "ami_type") == cfn["AmiType"]
        assert attribute(hcl, tf, "labels") == cfn["Labels"] and attribute(hcl, tf, "node_group_name") == cfn["NodegroupName"]
        assert attribute(hcl, tf, "update_config", "max_unavailable") == cfn["UpdateConfig"]["MaxUnavailable"]
        taint = value(value(block(hcl, tf), "dynamic"), "taint")  # one dynamic block over each.value.taints
        assert value(taint, "for_each") == "${each.value.taints}"
        assert {k: value(value(taint, "content"), k) for k in ("key", "value", "effect")} == {
            k: f"${{taint.value.{k}}}" for k in ("key", "value", "effect")
        }
        taints = attribute(hcl, tf, "dynamic", "taint", "for_each")
        assert taints == [{k.lower(): v for k, v in t.items()} for t in cfn.get("Taints", [])]
        template = RESOURCES[cfn["LaunchTemplate"]["Id"]["Ref"]]["Properties"]["LaunchTemplateData"]
        tf_template = address(cfn["LaunchTemplate"]["Id"]["Ref"], RESOURCES[cfn["LaunchTemplate"]["Id"]["Ref"]])
        assert (
            attribute(hcl, tf_template, "metadata_options", "http_tokens"),
            attribute(hcl, tf_template, "metadata_options", "http_put_response_hop_limit"),
        ) == (
            template["MetadataOptions"]["HttpTokens"],
            template["MetadataOptions"]["HttpPutResponseHopLimit"],
        )
        ebs = ("block_device_mappings", "ebs")
        cfn_ebs = template["BlockDeviceMappings"][0]["Ebs"]
        assert (
            attribute(hcl, tf_template, *ebs, "volume_size"),
            attribute(hcl, tf_template, *ebs, "volume_type"),
            attribute(hcl, tf_template, *ebs, "encrypted"),
        ) == (cfn_ebs["VolumeSize"], cfn_ebs["VolumeType"], True)
    assert (
        attribute(hcl, address("CpuNodeGroup", RESOURCES["CpuNodeGroup"]), "scaling_config", "max_size")
        == RESOURCES["CpuNodeGroup"]["Properties"]["ScalingConfig"]["MaxSize"]
    )
    addons = {attribute(hcl, k, "addon_name") for k in instances(hcl) if k.startswith("aws_eks_addon.")}
    assert addons == {r["Properties"]["AddonName"] for r in RESOURCES.values() if r["Type"] == "AWS::EKS::Addon"}
    assert "enableNetworkPolicy" in value(res["aws_eks_addon.vpc_cni_addon"], "configuration_values")
    upstreams = {value(b, "upstream_registry_url") for k, b in res.items() if k.startswith("aws_ecr_pull_through_cache_rule.")}
    assert upstreams == {
        r["Properties"]["UpstreamRegistryUrl"] for r in RESOURCES.values() if r["Type"] == "AWS::ECR::PullThroughCacheRule"
    }
    key = RESOURCES["PlatformKey"]["Properties"]
    assert value(res["aws_kms_key.platform_key"], "enable_key_rotation") is True
    assert value(res["aws_kms_key.platform_key"], "deletion_window_in_days") == key["PendingWindowInDays"]
    assert value(res["aws_flow_log.vpc_flow_log"], "traffic_type") == RESOURCES["VpcFlowLog"]["Properties"]["TrafficType"]
    node_policies = [p["Fn::Sub"].rsplit("/", 1)[1] for p in RESOURCES["NodeRole"]["Properties"]["ManagedPolicyArns"]]
    assert [p.rsplit("/", 1)[1] for p in value(res["aws_iam_role.node_role"], "managed_policy_arns")] == node_policies


def test_the_same_controller_permissions(hcl):
    for role in ("LoadBalancerControllerRole", "ClusterAutoscalerRole", "VeleroRole"):
        (policy,) = RESOURCES[role]["Properties"]["Policies"]
        if role in CONTROLLER_ROLES:  # jsonencode of its statements in local.controller_roles
            policy_block = block(hcl, "aws_iam_role_policy.controller_role")
            assert "jsonencode" in value(policy_block, "policy") and "each.value.statements" in value(policy_block, "policy")
            text = json.dumps(value(hcl["locals"], "controller_roles")[snake(role).removesuffix("_role")]["statements"])
        else:
            text = value(hcl["resource"][f"aws_iam_role_policy.{snake(role)}"], "policy")
        for statement in policy["PolicyDocument"]["Statement"]:
            assert quoted(text, statement["Sid"]), (role, statement["Sid"])
            for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
                assert quoted(text, action), (role, action)
        for condition in (
            "aws:RequestTag/elbv2.k8s.aws/cluster",
            "aws:ResourceTag/elbv2.k8s.aws/cluster",
            "aws:ResourceTag/eks:cluster-name",
        ):
            assert (condition in json.dumps(policy)) == (condition in text), (role, condition)


def test_checkov_terraform_finds_nothing_and_every_skip_says_why(infra_python: Path, tmp_path: Path):
    report = checkov_passes(infra_python, tmp_path, "-d", str(TERRAFORM), "--framework", "terraform", more_than=50)
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"]["suppress_comment"]) > 40, check["check_id"]


def test_each_renamed_address_moves_to_a_resource_of_the_module(hcl):
    """moved.tf.json: a state written before a resource became a for_each one moves instead of being replaced."""
    moves = json.loads((TERRAFORM / "moved.tf.json").read_text())["moved"]
    found = instances(hcl)
    for move in moves:
        to = move["to"].replace('"', "")
        assert to in found, move
        assert move["from"].removesuffix("[0]") not in found, move
    assert len({m["from"] for m in moves}) == len({m["to"] for m in moves}) == len(moves)
