"""radstream.template: the local runtime resolves the workflow's task ARNs, aliases included."""

from __future__ import annotations

from pathlib import Path

import pytest

from radstream.template import DEFAULT_TEMPLATE, LOCAL_ARN, Template
from shared.errors import ConfigurationError

TEMPLATE = """
Globals:
  Function:
    AutoPublishAlias: live
Resources:
  ValidateFunction:
    Type: AWS::Serverless::Function
    Properties:
      ImageConfig: {Command: [services.validate.handler.lambda_handler]}
  Other:
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
    template = Template(DEFAULT_TEMPLATE)
    _, machine = template.state_machine
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert substitutions and all(value == {"Ref": f"{name[:-3]}.Alias"} for name, value in substitutions.items())
    assert template.doc["Globals"]["Function"]["AutoPublishAlias"] == "live"
