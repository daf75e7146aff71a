"""Critical-finding rules: which finding, over which probability, for which priorities, sent how (a JSON file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import Finding
from shared.errors import ConfigurationError

DEFAULT_RULES = Path(__file__).with_name("critical_findings.json")
Channel = Literal["hl7", "event", "fhir"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    label: str
    # A number: that probability. "high-specificity": the live model version's card point for the label, never below the
    # finding's own threshold (Finding.high_specificity_threshold, carried by the classifier's output), so the rule follows
    # a newly activated version; where that version's card gives no point, the finding's own threshold. None: the
    # finding's own threshold (Finding.threshold).
    threshold: Annotated[float, Field(ge=0, le=1)] | Literal["high-specificity"] | None = None
    priorities: list[Literal["stat", "urgent", "routine"]] = ["stat", "urgent", "routine"]
    send: list[Channel] = ["hl7", "event", "fhir"]


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rules: list[Rule]


def load_rules(path: Path | None = None) -> list[Rule]:
    """The rules file, parsed once per version of it: a file edited since (another mtime, size or inode) is read again,
    so a change takes effect at the next study, as when every study read it."""
    source = Path(path or DEFAULT_RULES)
    try:
        st = source.stat()
    except OSError as e:
        raise ConfigurationError(f"NOTIFY_RULES: {source} is not a readable rules file ({type(e).__name__})") from e
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _LOADED.get(str(source))
    if cached is not None and cached[0] == stamp:
        return list(cached[1])
    rules = _parse_rules(source)
    _LOADED[str(source)] = (stamp, rules)
    return list(rules)


# Parsed rules files by path, with the (inode, mtime, size) they were parsed at (one small entry per rules file).
_LOADED: dict[str, tuple[tuple[int, int, int], list[Rule]]] = {}


def _parse_rules(source: Path) -> list[Rule]:
    try:
        rules = RuleSet.model_validate(json.loads(source.read_text())).rules
    except (OSError, ValueError, ValidationError) as e:
        raise ConfigurationError(f"NOTIFY_RULES: {source} is not a readable rules file ({type(e).__name__})") from e
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"NOTIFY_RULES: {source} names a rule twice; each rule needs its own name")
    return rules


def held_to(rule: Rule, finding: Finding) -> float:
    """The probability a rule holds its finding to (see Rule.threshold)."""
    if rule.threshold == "high-specificity":
        point = finding.high_specificity_threshold
        return finding.threshold if point is None else max(finding.threshold, point)
    return finding.threshold if rule.threshold is None else rule.threshold


def fired(rules: list[Rule], findings: list[Finding], priority: str) -> list[tuple[Rule, Finding, float]]:
    """Each rule that fires on these findings, with the finding and the threshold it was held to."""
    by_label = {f.label: f for f in findings}
    out = []
    for rule in rules:
        finding = by_label.get(rule.label)
        if finding is None or priority not in rule.priorities:
            continue
        threshold = held_to(rule, finding)
        if finding.probability >= threshold:
            out.append((rule, finding, threshold))
    return out
