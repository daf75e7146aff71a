"""Contract tests on template.yaml: the names its Retry/Catch match, the handlers its tasks call, its rule's pattern.

Everything is read from the template, never copied into the test.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import shared.errors
from radstream.eventpattern import apply_input_transformer, matches
from radstream.local_aws import s3_event
from radstream.template import DEFAULT_TEMPLATE, Template

ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"IMAGES_BUCKET": "images", "RESULTS_BUCKET": "results", "TELEMETRY_BUCKET": "telemetry", "ARTIFACTS_BUCKET": "artifacts"}


def walk_states(states: dict):
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from walk_states(branch["States"])
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from walk_states(processor["States"])


def our_error_names() -> set[str]:
    def names(cls: type) -> set[str]:
        return {cls.__name__}.union(*(names(c) for c in cls.__subclasses__()))

    return names(shared.errors.RadStreamError)


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(DEFAULT_TEMPLATE)


# The errors Step Functions' optimized StartExecution integration raises (the lane hand-off, docs/triage.md).
START_EXECUTION = "arn:aws:states:::states:startExecution"
START_EXECUTION_ERRORS = {
    f"StepFunctions.{e}"
    for e in ("ExecutionAlreadyExistsException", "ExecutionLimitExceededException", "SdkClientException", "AWSStepFunctionsException")
}


def test_retry_and_catch_name_only_errors_that_exist(template):
    known = our_error_names()
    for name, state in walk_states(template.definition()["States"]):
        service = START_EXECUTION_ERRORS if state.get("Resource") == START_EXECUTION else set()
        for rule in state.get("Retry", []) + state.get("Catch", []):
            for error in rule["ErrorEquals"]:
                assert error.startswith(("States.", "Lambda.")) or error in known | service, f"{name} matches unknown error {error}"


def test_permanent_errors_are_never_retried(template):
    retryable = {n for n in our_error_names() if getattr(shared.errors, n).retryable}
    for name, state in walk_states(template.definition()["States"]):
        for rule in state.get("Retry", []):
            ours = {e for e in rule["ErrorEquals"] if not e.startswith(("States.", "Lambda.", "StepFunctions."))}
            assert ours <= retryable, f"{name} retries permanent errors {ours - retryable}"
            # A hand-off that already happened is done, not retried (its Catch ends the routine execution).
            assert "StepFunctions.ExecutionAlreadyExistsException" not in rule["ErrorEquals"], name
            assert "States.ALL" not in rule["ErrorEquals"], f"{name} retries everything"


def test_every_task_calls_a_handler_that_imports(template):
    all_tasks = [(n, s) for n, s in walk_states(template.definition()["States"]) if s["Type"] == "Task"]
    # The one service integration: the routine lane's hand-off to the urgent lane (docs/triage.md).
    assert [(n, s["Resource"]) for n, s in all_tasks if not template.is_function(s["Resource"])] == [
        ("HandOffToUrgentLane", START_EXECUTION)
    ]
    tasks = [s for _, s in all_tasks if template.is_function(s["Resource"])]
    # validate, prepare, 3 model branches and the shadow candidates' branch, store, export, deliver and its dead letter,
    # the export's failure record (DICOM studies), notify and its dead letter, telemetry, record failure, failure telemetry
    assert len(tasks) == 16
    for task in tasks:
        module, _, attribute = template.handler_for(task["Resource"]).rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_every_function_image_exists_and_runs_its_handler(template):
    functions = {n: r for n, r in template.resources.items() if r["Type"] == "AWS::Serverless::Function"}
    assert functions
    for name, function in functions.items():
        assert function["Properties"]["PackageType"] == "Image"
        dockerfile = ROOT / function["Metadata"]["Dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        text = dockerfile.read_text()
        assert text.startswith("#") and "FROM public.ecr.aws/lambda/python:3.11" in text
        cmd = re.search(r'CMD \["([^"]+)"\]', text).group(1)
        module, _, attribute = cmd.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute))
        module, _, attribute = function["Properties"]["ImageConfig"]["Command"][0].rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_rule_starts_on_a_sidecar_and_nothing_else(template):
    (rule,) = template.event_rules(LOCAL)
    assert matches(rule.pattern, s3_event("images", "incoming/s1/study.json", 400))
    assert not matches(rule.pattern, s3_event("images", "incoming/s1/image.png", 4000)), "the image upload must not start a run"
    assert not matches(rule.pattern, s3_event("results", "incoming/s1/study.json", 400))
    assert not matches(rule.pattern, s3_event("images", "failed/s1/study.json", 400))
    execution_input = apply_input_transformer(rule.input_paths_map, rule.input_template, s3_event("images", "incoming/s1/study.json", 400))
    assert execution_input["bucket"] == "images" and execution_input["key"] == "incoming/s1/study.json"


def test_definition_substitutions_leave_no_placeholder(template):
    assert "${" not in str(template.definition())


def test_store_reads_the_state_keys_the_template_writes(template):
    """services/store derives the failed stage from which ResultPaths are in the state: they must be the template's."""
    from services.store.domain import STAGE_KEYS

    states = template.definition()["States"]
    by_stage = {"validate": "ValidateMetadata", "prepare": "PrepareTensors", "inference": "RunModels", "store": "StoreResults"}
    assert [stage for stage, _ in STAGE_KEYS] == list(by_stage), "in pipeline order"
    for stage, key in STAGE_KEYS:
        assert states[by_stage[stage]]["ResultPath"] == f"$.{key}", f"{by_stage[stage]} writes $.{key}"
    order, state = [], states["ValidateMetadata"]
    while "Next" in state or "Default" in state:  # a Choice's Default: the lane a routine study stays in
        order.append(state.get("Next") or state["Default"])
        state = states[order[-1]]
    assert order[:4] == ["ChooseLane", "PrepareTensors", "RunModels", "StoreResults"]


def test_every_task_is_a_stage_handler_with_one_dependency_door(template):
    from shared.observability import StageHandler

    for _, task in walk_states(template.definition()["States"]):
        if task["Type"] == "Task" and template.is_function(task["Resource"]):  # not the lane hand-off (its own test above)
            module, _, attribute = template.handler_for(task["Resource"]).rpartition(".")
            handler = getattr(importlib.import_module(module), attribute)
            assert isinstance(handler, StageHandler) and callable(handler.build), f"{module}.{attribute}"


def test_a_failure_that_cannot_be_recorded_ends_named(template):
    states = template.definition()["States"]
    (catch,) = states["RecordFailure"]["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    end = states[catch["Next"]]
    assert end["Type"] == "Fail" and end["Error"] == shared.errors.FailureNotRecorded.__name__


def test_nothing_after_the_result_reaches_record_failure(template):
    """The result is the study's record: from StoreResults on, every path (Next, Default, Choices, Catch) ends in the
    study's telemetry as a success; an export that fails is dead-lettered by the delivery function, never a study failure."""
    states = template.definition()["States"]

    def successors(state: dict) -> list[str]:
        names = [state.get("Next"), state.get("Default")] + [c.get("Next") for c in state.get("Choices", [])]
        return [n for n in names + [c["Next"] for c in state.get("Catch", [])] if n]

    seen, todo = set(), [states["StoreResults"]["Next"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(successors(states[name]))
    assert "ExportResults" in seen and "SendTelemetry" in seen
    assert not seen & {"RecordFailure", "SendFailureTelemetry", "StudyFailed"}, sorted(seen)
    (catch,) = states["ExportResults"]["Catch"]
    recorder = states[catch["Next"]]
    assert catch["ErrorEquals"] == ["States.ALL"] and recorder["Resource"] == states["RecordDeadLetter"]["Resource"]
    assert recorder["Parameters"]["error.$"] == catch["ResultPath"] and "exported.$" not in recorder["Parameters"]
    # Its failed export record takes ExportResults' place in the telemetry the study sends.
    counted = states[recorder["Next"]]
    assert counted["Type"] == "Pass" and counted["ResultPath"] == states["ExportResults"]["ResultPath"]
    assert "$.exported.telemetry" in states["SendTelemetry"]["Parameters"]["records.$"]
