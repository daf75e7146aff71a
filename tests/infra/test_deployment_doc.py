"""docs/deployment.md's numbers, computed from the templates and samconfig.toml: a count written by hand drifts (the
doc said six Lambdas when the template had eight, 9 interface endpoints for 11, 17 alarms for 22)."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, TEMPLATE

APP = load_yaml(TEMPLATE)["Resources"]
PLATFORM = load_yaml(ROOT / "infra" / "platform.yaml")["Resources"]
DOC = (ROOT / "docs" / "deployment.md").read_text()
HOURS_A_MONTH = 730


def of_type(resources: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def functions() -> int:
    return len(of_type(APP, "AWS::Serverless::Function"))


def images() -> int:
    return len({r["Metadata"]["Dockerfile"] for r in of_type(APP, "AWS::Serverless::Function").values()})


def interface_endpoints() -> int:
    return sum(r["Properties"]["VpcEndpointType"] == "Interface" for r in of_type(PLATFORM, "AWS::EC2::VPCEndpoint").values())


def alarms() -> int:
    return len(of_type(APP, "AWS::CloudWatch::Alarm"))


def alarm_metrics() -> int:
    """CloudWatch bills an alarm per metric it reads: metric math counts each MetricStat, not the expressions."""
    return sum(
        1 if "MetricName" in r["Properties"] else sum("MetricStat" in m for m in r["Properties"]["Metrics"])
        for r in of_type(APP, "AWS::CloudWatch::Alarm").values()
    )


def prod_reservations() -> tuple[int, ...]:
    """(functions at ReservedConcurrency, it, NotifyReservedConcurrency, urgent-lane functions, UrgentReservedConcurrency, the sum)."""
    overrides = tomllib.loads((ROOT / "samconfig.toml").read_text())["prod"]["deploy"]["parameters"]["parameter_overrides"]
    values = {
        **{n: int(p["Default"]) for n, p in load_yaml(TEMPLATE)["Parameters"].items() if "Default" in p and p["Type"] == "Number"},
        **{k: int(v) for k, v in (i.split("=", 1) for i in overrides) if v.isdigit()},
    }
    own = [
        r["Properties"].get("ReservedConcurrentExecutions", {"Ref": "ReservedConcurrency"})["Ref"]
        for r in of_type(APP, "AWS::Serverless::Function").values()
    ]
    shared, urgent = own.count("ReservedConcurrency"), own.count("UrgentReservedConcurrency")
    assert own.count("NotifyReservedConcurrency") == 1 and shared + urgent + 1 == len(own), own
    total = sum(values[name] for name in own)
    return shared, values["ReservedConcurrency"], values["NotifyReservedConcurrency"], urgent, values["UrgentReservedConcurrency"], total


def figures(pattern: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, DOC)
    assert found, f"docs/deployment.md no longer says {pattern!r}: say it, or change this test with the doc"
    return [f if isinstance(f, tuple) else (f,) for f in found]


def test_counts_match_the_templates():
    for pattern, expected in (
        (r"(\d+) container-image Lambdas", functions()),
        (r"(\d+) interface endpoints", interface_endpoints()),
        (r"(\d+) alarms \(\d+ metrics\)", alarms()),
        (r"\d+ alarms \((\d+) metrics\)", alarm_metrics()),
        (r"ECR: (\d+) Lambda images", images()),
    ):
        for (found,) in figures(pattern):
            assert int(found) == expected, f"{pattern}: the doc says {found}, the template has {expected}"
    for found in figures(r"prod's\s+(\d+) x (\d+) \+ (\d+) \+ (\d+) x (\d+) = (\d+)"):
        assert tuple(map(int, found)) == prod_reservations(), (
            f"the doc says {found}, the template and samconfig.toml give {prod_reservations()}"
        )
    for word in ("six", "seven", "nine"):  # counts spelled out are how the drift got in
        assert not re.search(rf"\b{word} (container-image )?(Lambdas|functions|interface endpoints|alarms)\b", DOC, re.IGNORECASE), word


def cost_rows() -> dict[str, Decimal]:
    """The monthly cost table: description -> its 'per month' figure (an optional item's $0 with its '(...+)' aside)."""
    section = DOC.split("## Monthly cost at the seed's load", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].startswith(("$", "**$")) and "total" not in cells[1]:
            rows[cells[1]] = Decimal(re.match(r"\**\$([\d.]+)", cells[3]).group(1))
    return rows


def test_the_cost_rows_follow_the_counts_and_add_up():
    rows = cost_rows()
    endpoints = next(v for k, v in rows.items() if "interface endpoints" in k)
    data_gb = Decimal(re.search(r"\(about (\d+) GB\) \|", DOC).group(1))
    assert endpoints == interface_endpoints() * 2 * HOURS_A_MONTH * Decimal("0.01") + data_gb * Decimal("0.01")
    cloudwatch = next(v for k, v in rows.items() if "alarms" in k)
    assert cloudwatch == alarm_metrics() * Decimal("0.10") + 3
    (total,) = figures(r"\*\*total, prod, without the optional items\*\* \| \| \*\*\$([\d.]+)\*\*")
    assert sum(rows.values()) == Decimal(total[0]), f"the rows add up to {sum(rows.values())}, the doc says {total[0]}"
    gpus = next(v for k, v in rows.items() if "g4dn" in k)
    images_storage = next(v for k, v in rows.items() if "S3 storage" in k)
    (shares,) = figures(r"The GPUs are (\d+) % of it, the endpoints (\d+) %, the images' storage (\d+) %")
    expected = tuple(str(round(100 * v / Decimal(total[0]))) for v in (gpus, endpoints, images_storage))
    assert shares == expected, f"the doc says {shares}, the rows give {expected}"
