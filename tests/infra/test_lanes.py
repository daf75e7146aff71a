"""The urgent lane in AWS (docs/triage.md, "AWS: the urgent lane"): one definition run by two state machines, the
routine one handing stat and urgent studies to the urgent one, whose stage functions have their own reserved
concurrency; the reservations fit the account's pool in every environment; each machine may do only what its lane does.

The hand-off is run, not read: template.yaml's definition, through the project's ASL interpreter (the one the local
runtime runs it with), under each machine's AWS name, with the stages stubbed at the invoke boundary."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from radstream.asl import StateMachine
from radstream.asl.errors import StatesError
from radstream.template import Template, load_yaml

from .conftest import ROOT, TEMPLATE

TEMPLATE_OBJ = Template(TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE_OBJ.resources
MACHINES = dict(TEMPLATE_OBJ.state_machines)
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text())
LANE_STAGES = ("ValidateFunction", "PrepareFunction", "InferenceFunction", "StoreFunction")
UPLOAD = {"bucket": "images", "key": "incoming/s1/study.json", "uploaded_at": "2026-12-08T03:00:00Z"}


def aws_name(machine: str, env: str = "dev") -> str:
    return MACHINES[machine]["Properties"]["Name"]["Fn::Sub"].replace("${EnvironmentName}", env)


def run_lane(machine: str, priority: str, hand_off_error: str | None = None) -> tuple[Any, list[str], dict[str, Any]]:
    """The study workflow under `machine`'s AWS name; ValidateMetadata decides `priority`, PrepareTensors ends the study
    (failed, recorded): what matters is which state follows ValidateMetadata."""
    entered: list[str] = []
    payloads: dict[str, Any] = {}

    def invoke(resource: str, payload: Any, context: Any) -> Any:
        entered.append(context.state_name)
        payloads[context.state_name] = payload
        if context.state_name == "ValidateMetadata":
            return {"study_id": "s1", "priority": priority, "image": {"format": "png"}}
        if context.state_name == "HandOffToUrgentLane":
            assert resource == "arn:aws:states:::states:startExecution"
            if hand_off_error:
                raise StatesError(hand_off_error, "the test's Step Functions refused")
            return {"ExecutionArn": "arn:aws:states:eu-west-1:1:execution:urgent:run-1", "StartDate": "2026-12-08T03:00:01Z"}
        if context.state_name == "PrepareTensors":
            raise StatesError("StopHere", "the test ends the study at the first stage after the lane is chosen")
        if context.state_name == "RecordFailure":
            return {"records": [], "study_id": "s1", "error_type": "StopHere", "message": "stopped"}
        return {}

    machine_obj = StateMachine(TEMPLATE_OBJ.definition(), invoke, name=aws_name(machine), sleep=lambda _: None, max_workers=0)
    return machine_obj.run(dict(UPLOAD), name="run-1"), entered, payloads


@pytest.mark.parametrize("priority", ["stat", "urgent"])
def test_the_routine_lane_hands_a_stat_or_urgent_study_to_the_urgent_lane(priority):
    result, entered, payloads = run_lane("StudyWorkflow", priority)
    assert result.status == "SUCCEEDED" and entered == ["ValidateMetadata", "HandOffToUrgentLane"]
    # The urgent execution: the same upload event, the same name (a retried hand-off finds it, never starts a second).
    assert payloads["HandOffToUrgentLane"] == {
        "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:UrgentStudyWorkflow",
        "Name": "run-1",
        "Input": UPLOAD,
    }


def test_a_routine_study_stays_in_the_routine_lane():
    result, entered, _ = run_lane("StudyWorkflow", "routine")
    assert result.status == "FAILED" and entered[:2] == ["ValidateMetadata", "PrepareTensors"]


@pytest.mark.parametrize("priority", ["stat", "urgent", "routine"])
def test_the_urgent_lane_never_hands_off(priority):
    _, entered, _ = run_lane("UrgentStudyWorkflow", priority)
    assert entered[:2] == ["ValidateMetadata", "PrepareTensors"]


def test_a_hand_off_already_made_ends_here_and_one_that_fails_runs_the_study_in_the_routine_lane():
    result, entered, _ = run_lane("StudyWorkflow", "stat", hand_off_error="StepFunctions.ExecutionAlreadyExistsException")
    assert result.status == "SUCCEEDED" and entered == ["ValidateMetadata", "HandOffToUrgentLane"]
    _, entered, _ = run_lane("StudyWorkflow", "stat", hand_off_error="StepFunctions.SdkClientException")
    assert entered[:6] == ["ValidateMetadata"] + ["HandOffToUrgentLane"] * 4 + ["PrepareTensors"], "3 retries, then the routine lane"
    _, entered, _ = run_lane("StudyWorkflow", "urgent", hand_off_error="States.TaskFailed")
    assert entered[:3] == ["ValidateMetadata", "HandOffToUrgentLane", "PrepareTensors"]


def test_the_local_runtime_runs_one_lane():
    """Locally there is no concurrency to split: the runtime's machine has neither lane's name, so it never hands off."""
    definition = TEMPLATE_OBJ.definition()
    (rule,) = definition["States"]["ChooseLane"]["Choices"]
    name_test = next(r for r in rule["And"] if r["Variable"] == "$$.StateMachine.Name")
    assert name_test["StringEquals"] == aws_name("StudyWorkflow") != aws_name("UrgentStudyWorkflow")
    assert StateMachine(definition, lambda *a: None).name not in (aws_name("StudyWorkflow"), aws_name("UrgentStudyWorkflow"))


def test_both_lanes_run_one_definition():
    assert set(MACHINES) == {"StudyWorkflow", "UrgentStudyWorkflow"}
    uris = {m["Properties"]["DefinitionUri"] for m in MACHINES.values()}
    assert uris == {"statemachine/study.asl.yaml"} and not any("Definition" in m["Properties"] for m in MACHINES.values())
    routine, urgent = (MACHINES[n]["Properties"]["DefinitionSubstitutions"] for n in ("StudyWorkflow", "UrgentStudyWorkflow"))
    assert set(routine) == set(urgent)
    # ChooseLane compares the running machine's name with the routine one's: the same value in both, the routine's Name.
    assert routine["RoutineLaneName"] == urgent["RoutineLaneName"] == MACHINES["StudyWorkflow"]["Properties"]["Name"]
    assert routine["UrgentLaneArn"] == {"Ref": "UrgentStudyWorkflow"}
    differ = {k for k in routine if routine[k] != urgent[k]}
    assert differ == {f"{stage}Arn" for stage in LANE_STAGES} | {"UrgentLaneArn"}
    for stage in LANE_STAGES:
        assert urgent[f"{stage}Arn"] == {"Ref": f"Urgent{stage}.Alias"}
    # Only the routine lane is started by uploads; the urgent one only by the hand-off.
    assert MACHINES["StudyWorkflow"]["Properties"]["Events"] and "Events" not in MACHINES["UrgentStudyWorkflow"]["Properties"]


def test_each_urgent_stage_is_its_routine_stage_but_for_its_name_and_its_own_reservation():
    for stage in LANE_STAGES:
        routine, urgent = RESOURCES[stage]["Properties"], RESOURCES[f"Urgent{stage}"]["Properties"]
        assert urgent["ReservedConcurrentExecutions"] == {"Ref": "UrgentReservedConcurrency"}
        assert "ReservedConcurrentExecutions" not in routine, f"{stage}: the routine lane's reservation is Globals' ReservedConcurrency"
        assert urgent["FunctionName"]["Fn::Sub"] == routine["FunctionName"]["Fn::Sub"].replace(
            "-${EnvironmentName}", "-urgent-${EnvironmentName}"
        )
        same = {k: v for k, v in routine.items() if k not in ("FunctionName", "DeploymentPreference")}
        # The same image, handler, policies (least privilege, as the routine stage's), network and settings.
        assert {k: v for k, v in urgent.items() if k in same} == same, stage
        assert RESOURCES[f"Urgent{stage}"]["Metadata"] == RESOURCES[stage]["Metadata"]
        log_group = RESOURCES[f"Urgent{stage}LogGroup"]["Properties"]["LogGroupName"]["Fn::Sub"]
        assert log_group == "/aws/lambda/" + urgent["FunctionName"]["Fn::Sub"]


def reservations(env: str) -> dict[str, int]:
    """Each function's reserved concurrency in an environment (samconfig's overrides, else the parameters' defaults)."""
    overrides = dict(item.split("=", 1) for item in SAMCONFIG[env]["deploy"]["parameters"]["parameter_overrides"])
    parameters = TEMPLATE_OBJ.doc["Parameters"]

    def value(ref: dict[str, str]) -> int:
        return int(overrides.get(ref["Ref"], parameters[ref["Ref"]]["Default"]))

    default = TEMPLATE_OBJ.doc["Globals"]["Function"]["ReservedConcurrentExecutions"]
    return {
        name: value(r["Properties"].get("ReservedConcurrentExecutions", default))
        for name, r in RESOURCES.items()
        if r["Type"] == "AWS::Serverless::Function"
    }


def test_the_reservations_fit_the_account_pool_the_docs_state_in_every_environment():
    doc = (ROOT / "docs" / "deployment.md").read_text()
    pool, unreserved = (
        int(n.replace(",", ""))
        for n in re.search(r"account's pool \(([\d,]+) by default\), which must keep (\d+) unreserved", doc).groups()
    )
    for env in ("dev", "staging", "prod"):
        total = sum(reservations(env).values())
        assert total <= pool - unreserved, f"{env}: {total} reserved of {pool - unreserved}"


def test_the_routine_lane_is_bounded_and_cannot_take_the_urgent_lanes_concurrency():
    for env in ("dev", "staging", "prod"):
        reserved = reservations(env)
        for stage in LANE_STAGES:
            # Both reserved: the routine backlog throttles at its own reservation; the urgent functions' is theirs alone.
            assert reserved[stage] >= 1 and reserved[f"Urgent{stage}"] >= 1, (env, stage)
    # Every function the routine lane invokes has a reservation (Globals' or its own): none draws on the unreserved pool.
    routine = MACHINES["StudyWorkflow"]["Properties"]["DefinitionSubstitutions"]
    assert all(v["Ref"].removesuffix(".Alias") in reservations("prod") for k, v in routine.items() if k.endswith("FunctionArn"))


def invoked_functions(machine: dict[str, Any]) -> set[str]:
    return {p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in machine["Properties"]["Policies"] if "LambdaInvokePolicy" in p}


def test_each_machine_may_invoke_exactly_its_lanes_functions_and_only_the_routine_one_may_hand_off():
    for name, machine in MACHINES.items():
        substituted = {
            v["Ref"].removesuffix(".Alias")
            for k, v in machine["Properties"]["DefinitionSubstitutions"].items()
            if k.endswith("FunctionArn")
        }
        assert invoked_functions(machine) == substituted, name
    starts = {
        name: [s for p in m["Properties"]["Policies"] for s in p.get("Statement", []) if "states:StartExecution" in str(s.get("Action"))]
        for name, m in MACHINES.items()
    }
    assert starts["UrgentStudyWorkflow"] == []
    (statement,) = starts["StudyWorkflow"]
    assert statement["Action"] == "states:StartExecution" and statement["Resource"] == {"Ref": "UrgentStudyWorkflow"}


def test_a_failed_urgent_execution_is_caught_as_a_routine_one_is():
    pattern = RESOURCES["WorkflowFailedRule"]["Properties"]["EventPattern"]
    assert pattern["detail"]["stateMachineArn"] == [{"Ref": "StudyWorkflow"}, {"Ref": "UrgentStudyWorkflow"}]


def test_the_definition_file_is_what_the_template_names():
    definition = load_yaml(ROOT / "statemachine" / "study.asl.yaml")
    assert definition["StartAt"] == "ValidateMetadata" and definition["States"]["ValidateMetadata"]["Next"] == "ChooseLane"
