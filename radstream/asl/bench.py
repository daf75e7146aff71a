"""Measure interpreter overhead per execution (6 states, 3-branch Parallel, no-op tasks); prints the median."""

from __future__ import annotations

import statistics
import time
from typing import Any

from radstream.asl import StateMachine, TaskContext


def _task(name: str, end: bool = False, **extra: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", "Resource": f"arn:aws:lambda:local:0:function:{name}", **extra}
    return state | ({"End": True} if end else {})


DEFINITION: dict[str, Any] = {
    "StartAt": "Validate",
    "States": {
        "Validate": _task(
            "validate", Next="Prepare", ResultPath="$.validation", Retry=[{"ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 2}]
        ),
        "Prepare": _task("prepare", Next="Infer", ResultPath="$.prepared"),
        "Infer": {
            "Type": "Parallel",
            "Next": "Route",
            "ResultPath": "$.findings",
            "Branches": [
                {"StartAt": m, "States": {m: _task(m, end=True, Parameters={"study.$": "$.study", "model": m})}}
                for m in ("densenet", "efficientnet", "vit")
            ],
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Failed"}],
        },
        "Route": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.validation.ok", "BooleanEquals": True, "Next": "Store"}],
            "Default": "Failed",
        },
        "Store": _task("store", Next="Done", ResultPath=None),
        "Done": {"Type": "Succeed"},
        "Failed": {"Type": "Fail", "Error": "Pipeline.Failed"},
    },
}


def _invoke(resource: str, payload: Any, ctx: TaskContext) -> Any:
    return {"ok": True}


def main(runs: int = 2000) -> None:
    machine = StateMachine(DEFINITION, _invoke)
    data = {"study": {"bucket": "b", "key": "studies/1.dcm", "size": 1234}}
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = machine.run(data)
        samples.append(time.perf_counter() - t0)
        assert result.status == "SUCCEEDED", result
    print(
        f"median {statistics.median(samples) * 1e6:.0f} us per execution "
        f"(p90 {statistics.quantiles(samples, n=10)[-1] * 1e6:.0f} us, {runs} runs, "
        f"{len(result.history)} history events)"
    )


if __name__ == "__main__":
    main()
