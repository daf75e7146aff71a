"""radstream.template: the local runtime resolves the workflow's task ARNs, aliases included."""

from __future__ import annotations

from pathlib import Path

import pytest

from radstream.template import DEFAULT_TEMPLATE, LOCAL_ARN, Template
from shared.errors import ConfigurationError

# A function and its alias: the head of every template here.
FUNCTION = """
Globals:
  Function:
    AutoPublishAlias: live
Resources:
  ValidateFunction:
    Type: AWS::Serverless::Function
    Properties:
      ImageConfig: {Command: [services.validate.handler.lambda_handler]}
"""
TEMPLATE = (
    FUNCTION
    + """  Other:
    Type: AWS::SNS::Topic
  Workflow:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionSubstitutions:
        ByAlias: !Ref ValidateFunction.Alias
        ByAliasResource: !Ref ValidateFunctionAliaslive
        ByArn: !GetAtt ValidateFunction.Arn
      Definition:
        StartAt: A
        States:
          A: {Type: Task, Resource: "${ByAlias}", Next: B}
          B: {Type: Task, Resource: "${ByAliasResource}", Next: C}
          C: {Type: Task, Resource: "${ByArn}", End: true}
"""
)


def write(tmp_path: Path, text: str) -> Template:
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return Template(path)


def test_an_alias_resolves_to_its_function(tmp_path):
    template = write(tmp_path, TEMPLATE)
    states = template.definition()["States"]
    assert {states[s]["Resource"] for s in "ABC"} == {LOCAL_ARN.format("ValidateFunction")}
    assert template.handler_for(states["A"]["Resource"]) == "services.validate.handler.lambda_handler"


def test_an_alias_of_something_else_is_refused(tmp_path):
    template = write(tmp_path, TEMPLATE.replace("!Ref ValidateFunction.Alias", "!Ref Other.Alias"))
    with pytest.raises(ConfigurationError, match="cannot resolve substitution"):
        template.definition()


def test_without_auto_publish_alias_there_is_no_alias(tmp_path):
    template = write(tmp_path, TEMPLATE.replace("    AutoPublishAlias: live\n", "    MemorySize: 512\n"))
    with pytest.raises(ConfigurationError, match="cannot resolve substitution"):
        template.definition()


def test_the_project_workflow_invokes_the_live_aliases():
    """Both lanes (docs/triage.md): the routine one each stage's function, the urgent one its own four stages' functions."""
    template = Template(DEFAULT_TEMPLATE)
    machines = dict(template.state_machines)
    assert template.state_machine[0] == "StudyWorkflow" and set(machines) == {"StudyWorkflow", "UrgentStudyWorkflow"}
    lane_stages = {"ValidateFunctionArn", "PrepareFunctionArn", "InferenceFunctionArn", "StoreFunctionArn"}
    for name, machine in machines.items():
        functions = {k: v for k, v in machine["Properties"]["DefinitionSubstitutions"].items() if k.endswith("FunctionArn")}
        assert len(functions) == 9, name
        prefix = {"StudyWorkflow": "", "UrgentStudyWorkflow": "Urgent"}[name]
        for key, value in functions.items():
            assert value == {"Ref": f"{prefix if key in lane_stages else ''}{key[:-3]}.Alias"}, (name, key)
    assert template.doc["Globals"]["Function"]["AutoPublishAlias"] == "live"


LANES = (
    FUNCTION
    + """  UrgentValidateFunction:
    Type: AWS::Serverless::Function
    Properties:
      ImageConfig: {Command: [services.validate.handler.lambda_handler]}
  Routine:
    Type: AWS::Serverless::StateMachine
    Properties:
      Events: {Up: {Type: EventBridgeRule, Properties: {Pattern: {source: [x]}}}}
      DefinitionSubstitutions:
        Validate: !Ref ValidateFunction.Alias
        Name: !Sub routine-${Env}-${AWS::Region}
        Other: !Ref Urgent
      DefinitionUri: lanes.asl.yaml
  Urgent:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionSubstitutions:
        Validate: !Ref UrgentValidateFunction.Alias
        Name: !Sub routine-${Env}-${AWS::Region}
        Other: !Sub arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:urgent-${Env}
      DefinitionUri: lanes.asl.yaml
Parameters:
  Env: {Type: String, Default: dev}
"""
)
LANES_DEFINITION = """
StartAt: A
States:
  A: {Type: Task, Resource: "${Validate}", Next: B}
  B: {Type: Pass, Parameters: {name: "${Name}", other: "${Other}"}, End: true}
"""


def lanes(tmp_path: Path, text: str = LANES) -> Template:
    (tmp_path / "lanes.asl.yaml").write_text(LANES_DEFINITION)
    return write(tmp_path, text)


def test_the_local_runtime_runs_the_machine_the_uploads_start_with_its_wiring(tmp_path):
    template = lanes(tmp_path)
    assert template.state_machine[0] == "Routine" and [r.name for r in template.event_rules({})] == ["Up"]
    states = template.definition()["States"]
    assert states["A"]["Resource"] == LOCAL_ARN.format("ValidateFunction")
    # A name built from parameters: their defaults, a local region; a machine's Ref: a local ARN, never run.
    assert states["B"]["Parameters"] == {"name": "routine-dev-local", "other": "arn:aws:states:local:000000000000:stateMachine:Urgent"}
    assert not template.is_function(states["B"]["Parameters"]["other"]) and template.is_function(states["A"]["Resource"])


def test_the_lanes_share_one_definition_and_its_substitution_names(tmp_path):
    with pytest.raises(ConfigurationError, match="Urgent runs another definition"):
        head, _, tail = LANES.rpartition("lanes.asl.yaml")  # the urgent machine's: a copy of the definition
        lanes(tmp_path, f"{head}copy.asl.yaml{tail}").definition()
    with pytest.raises(ConfigurationError, match="Urgent substitutes other names"):
        lanes(
            tmp_path,
            LANES.replace("        Validate: !Ref UrgentValidateFunction.Alias", "        Check: !Ref UrgentValidateFunction.Alias"),
        ).definition()
    with pytest.raises(ConfigurationError, match="expected one state machine"):
        lanes(
            tmp_path, LANES.replace("      Events: {Up: {Type: EventBridgeRule, Properties: {Pattern: {source: [x]}}}}\n", "")
        ).definition()
    with pytest.raises(ConfigurationError, match="cannot resolve"):
        lanes(tmp_path, LANES.replace("routine-${Env}-${AWS::Region}", "routine-${Nope}")).definition()
