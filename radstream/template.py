"""Reads template.yaml: the workflow definition, its task wiring and the EventBridge rules, for the local runtime.

There is no second copy of any of these in code: the local runtime runs what this returns.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ConfigurationError

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
LOCAL_ARN = "arn:aws:lambda:local:000000000000:function:{}"
LOCAL_STATE_MACHINE_ARN = "arn:aws:states:local:000000000000:stateMachine:{}"
_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    "GetAtt": "Fn::GetAtt",
    "Sub": "Fn::Sub",
    "Join": "Fn::Join",
    "Select": "Fn::Select",
    "Split": "Fn::Split",
    "If": "Fn::If",
    "Equals": "Fn::Equals",
    "Not": "Fn::Not",
    "And": "Fn::And",
    "Or": "Fn::Or",
    "FindInMap": "Fn::FindInMap",
    "ImportValue": "Fn::ImportValue",
    "Base64": "Fn::Base64",
    "Cidr": "Fn::Cidr",
    "GetAZs": "Fn::GetAZs",
    "Transform": "Fn::Transform",
}


# libyaml's scanner and parser where PyYAML was built with it (the wheels are): template.yaml parses in ~0.05 s
# instead of ~0.5 s in pure Python, paid by every `radstream` command and every runtime. Same constructors, same data.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """YAML with CloudFormation's short-form tags, read into their long form ({"Fn::Sub": ...})."""


def _construct(tag: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if tag == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {tag: value}

    return construct


for _short, _long in _TAGS.items():
    _CfnLoader.add_constructor(f"!{_short}", _construct(_long))


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)


@dataclass(frozen=True)
class EventRule:
    name: str
    pattern: dict[str, Any]
    input_paths_map: dict[str, str]
    input_template: str | None


class Template:
    def __init__(self, path: Path = DEFAULT_TEMPLATE) -> None:
        self.path = Path(path)
        self.doc = load_yaml(self.path)
        self.resources: dict[str, dict[str, Any]] = self.doc.get("Resources", {})

    def _one(self, resource_type: str) -> tuple[str, dict[str, Any]]:
        found = [(name, r) for name, r in self.resources.items() if r.get("Type") == resource_type]
        if len(found) != 1:
            raise ConfigurationError(f"{self.path}: expected one {resource_type}, found {len(found)}")
        return found[0]

    @property
    def state_machines(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, r) for name, r in self.resources.items() if r.get("Type") == "AWS::Serverless::StateMachine"]

    @property
    def state_machine(self) -> tuple[str, dict[str, Any]]:
        """The machine the local runtime runs: the one the upload rules start (the routine lane, docs/triage.md).

        Every other machine must run the same definition (one DefinitionUri, or an identical Definition) with the same
        substitution names: the lanes differ only in which functions they invoke, and locally there is one lane (no
        concurrency to split), so running the entry machine's wiring is running the workflow.
        """
        machines = self.state_machines
        entries = machines if len(machines) == 1 else [(name, m) for name, m in machines if m["Properties"].get("Events")]
        if len(entries) != 1:
            raise ConfigurationError(f"{self.path}: expected one state machine, or one with upload events, found {len(entries)}")
        _, entry = entries[0]
        for name, machine in machines:
            props, first = machine["Properties"], entry["Properties"]
            if (props.get("DefinitionUri"), props.get("Definition")) != (first.get("DefinitionUri"), first.get("Definition")):
                raise ConfigurationError(f"{self.path}: {name} runs another definition than {entries[0][0]}: the lanes share one")
            if set(props.get("DefinitionSubstitutions", {})) != set(first.get("DefinitionSubstitutions", {})):
                raise ConfigurationError(f"{self.path}: {name} substitutes other names than {entries[0][0]}")
        return entries[0]

    def definition(self) -> dict[str, Any]:
        """The state machine definition with DefinitionSubstitutions applied, functions as local ARNs."""
        _, machine = self.state_machine
        props = machine["Properties"]
        if "Definition" in props:
            definition = copy.deepcopy(props["Definition"])
        elif "DefinitionUri" in props:
            uri = self.path.parent / props["DefinitionUri"]
            definition = load_yaml(uri)
        else:
            raise ConfigurationError(f"{self.path}: the state machine has neither Definition nor DefinitionUri")
        substitutions = {name: self._local_value(value) for name, value in props.get("DefinitionSubstitutions", {}).items()}
        return _substitute(definition, substitutions)

    def _local_value(self, value: Any) -> str:
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            logical_id, attribute = value["Fn::GetAtt"]
            if attribute == "Arn" and self.resources.get(logical_id, {}).get("Type") == "AWS::Serverless::Function":
                return LOCAL_ARN.format(logical_id)
        if isinstance(value, dict) and "Ref" in value and self.resources.get(value["Ref"], {}).get("Type") == "AWS::Serverless::Function":
            return LOCAL_ARN.format(value["Ref"])
        if isinstance(value, dict) and "Ref" in value and (logical_id := self._aliased_function(value["Ref"])):
            return LOCAL_ARN.format(logical_id)  # an alias runs its function's code: locally, the function
        if (
            isinstance(value, dict)
            and "Ref" in value
            and self.resources.get(value["Ref"], {}).get("Type") == "AWS::Serverless::StateMachine"
        ):
            return LOCAL_STATE_MACHINE_ARN.format(value["Ref"])
        if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
            # A name or ARN built from parameters (a machine's own name, say): an AWS resource's, which the local runtime
            # resolves with the parameters' defaults and a local account and region, and never runs.
            return re.sub(r"\$\{([A-Za-z0-9_:]+)\}", lambda m: self._local_parameter(m.group(1)), value["Fn::Sub"])
        if isinstance(value, str):
            return value
        raise ConfigurationError(f"{self.path}: the local runtime cannot resolve substitution {value!r}")

    def _local_parameter(self, name: str) -> str:
        pseudo = {"AWS::Partition": "aws", "AWS::Region": "local", "AWS::AccountId": "000000000000"}
        if name in pseudo:
            return pseudo[name]
        parameter = self.doc.get("Parameters", {}).get(name)
        if not parameter or "Default" not in parameter:
            raise ConfigurationError(f"{self.path}: the local runtime cannot resolve ${{{name}}} in a substitution")
        return str(parameter["Default"])

    def is_function(self, resource: str) -> bool:
        """Whether a task's Resource is one of this template's functions (a local ARN), not a service integration."""
        logical_id = resource.rsplit(":", 1)[-1]
        return resource == LOCAL_ARN.format(logical_id) and self.resources.get(logical_id, {}).get("Type") == "AWS::Serverless::Function"

    def _aliased_function(self, ref: str) -> str | None:
        """The function behind SAM's alias reference: `Fn.Alias`, or the alias resource `FnAlias<name>`."""
        for logical_id, resource in self.resources.items():
            if resource.get("Type") != "AWS::Serverless::Function":
                continue
            alias = resource.get("Properties", {}).get("AutoPublishAlias") or self.doc.get("Globals", {}).get("Function", {}).get(
                "AutoPublishAlias"
            )
            if alias and ref in (f"{logical_id}.Alias", f"{logical_id}Alias{alias}"):
                return logical_id
        return None

    def handler_for(self, resource: str) -> str:
        """A task's Resource (a local function ARN) -> the dotted handler its container image runs."""
        logical_id = resource.rsplit(":", 1)[-1]
        function = self.resources.get(logical_id)
        if not function or function.get("Type") != "AWS::Serverless::Function":
            raise ConfigurationError(f"{self.path}: task resource {resource!r} is not a function of this template")
        command = function["Properties"].get("ImageConfig", {}).get("Command") or []
        if len(command) != 1:
            raise ConfigurationError(f"{self.path}: {logical_id} needs ImageConfig.Command with one handler")
        return command[0]

    def global_environment(self) -> dict[str, Any]:
        return self.doc.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})

    def event_rules(self, local_values: dict[str, str]) -> list[EventRule]:
        """The state machine's EventBridge rules, with Refs resolved the way the functions' settings are.

        A Ref to a bucket becomes the local bucket name of the setting that Globals maps it to
        (IMAGES_BUCKET: !Ref ImagesBucket), so the pattern is the template's, with local names.
        """
        by_logical_id = {
            v["Ref"]: local_values[k]
            for k, v in self.global_environment().items()
            if isinstance(v, dict) and "Ref" in v and k in local_values
        }
        rules = []
        events = {name: event for _, machine in self.state_machines for name, event in machine["Properties"].get("Events", {}).items()}
        for name, event in events.items():
            if event.get("Type") != "EventBridgeRule":
                continue
            props = event["Properties"]
            transformer = props.get("InputTransformer", {})
            rules.append(
                EventRule(
                    name=name,
                    pattern=_resolve_refs(props["Pattern"], by_logical_id, self.path),
                    input_paths_map=transformer.get("InputPathsMap", {}),
                    input_template=transformer.get("InputTemplate"),
                )
            )
        if not rules:
            raise ConfigurationError(f"{self.path}: the state machine has no EventBridgeRule event")
        return rules


def _substitute(value: Any, substitutions: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: substitutions.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_substitute(v, substitutions) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, substitutions) for k, v in value.items()}
    return value


def _resolve_refs(value: Any, refs: dict[str, str], path: Path) -> Any:
    if isinstance(value, dict):
        if "Ref" in value and len(value) == 1:
            if value["Ref"] not in refs:
                raise ConfigurationError(f"{path}: the local runtime cannot resolve Ref {value['Ref']} in a rule pattern")
            return refs[value["Ref"]]
        return {k: _resolve_refs(v, refs, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, refs, path) for v in value]
    return value
