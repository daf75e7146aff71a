"""Recovery as built: Velero's schedules in every environment's cluster, what they cover and keep against the bucket
the platform gives them (and its IRSA role), and docs/recovery.md's RTO/RPO table naming every component."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from radstream.template import load_yaml

from .conftest import ROOT

PLATFORM = load_yaml(ROOT / "infra" / "platform.yaml")["Resources"]
ENVS = ROOT / "infra" / "gitops" / "envs"
DOC = (ROOT / "docs" / "recovery.md").read_text()


def hours(ttl: str) -> float:
    h, m, s = (float(x) for x in re.fullmatch(r"(\d+)h(\d+)m(\d+)s", ttl).groups())
    return h + m / 60 + s / 3600


def test_every_environment_backs_up_what_git_does_not_hold():
    bucket_days = PLATFORM["ClusterBackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"]
    for env in sorted(p.name for p in ENVS.iterdir()):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(ENVS / env / "cluster")], check=True, capture_output=True, text=True, timeout=60
        ).stdout
        schedules = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Schedule"}
        assert schedules, env
        covered = {ns for s in schedules.values() for ns in s["spec"]["template"]["includedNamespaces"]}
        assert {"radstream-triton", "radstream-gateway", "argocd"} <= covered, env
        for name, schedule in schedules.items():
            assert schedule["metadata"]["namespace"] == "velero" and schedule["apiVersion"] == "velero.io/v1"
            assert len(schedule["spec"]["schedule"].split()) == 5, name  # cron
            # Velero deletes a backup at its TTL; the bucket must not expire it sooner.
            assert hours(schedule["spec"]["template"]["ttl"]) <= 24 * bucket_days, name
        gateway = [s for s in schedules.values() if "radstream-gateway" in s["spec"]["template"]["includedNamespaces"]]
        assert any(s["spec"]["schedule"].split()[1] == "*" for s in gateway), "the gateway's secret at least hourly (RPO 1 h)"


def test_velero_may_use_its_bucket_and_nothing_else():
    role = PLATFORM["VeleroRole"]["Properties"]
    body, _ = role["AssumeRolePolicyDocument"]["Fn::Sub"]
    assert "system:serviceaccount:velero:velero" in body
    (policy,) = role["Policies"]
    resources = json.dumps([s["Resource"] for s in policy["PolicyDocument"]["Statement"]])
    assert '*"' not in resources.replace("}/*", "}") and "ClusterBackupBucket" in resources
    assert {"ClusterBackupBucketName", "VeleroRoleArn"} <= set(load_yaml(ROOT / "infra" / "platform.yaml")["Outputs"])


def test_the_recovery_design_names_rto_and_rpo_for_every_component():
    table = DOC.split("## Per component", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| component") and "---" not in line]
    assert len(rows) >= 8
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
    for component in (
        "images and results buckets",
        "telemetry lake",
        "audit trail",
        "Triton",
        "gateway",
        "cluster state",
        "platform",
        "region",
        "embedded runtime",
    ):
        assert component in table, component
    assert "tests/e2e/test_restore_drill.py" in DOC and "## Runbook (AWS)" in DOC and "velero restore" in DOC
