"""Amazon States Language interpreter (JSONPath query language) for running SAM state machines in-process."""

from .errors import DefinitionError, StatesError
from .machine import LAMBDA_INVOKE, Execution, ExecutionResult, HistoryEvent, StateMachine, TaskContext

__all__ = [
    "LAMBDA_INVOKE",
    "DefinitionError",
    "Execution",
    "ExecutionResult",
    "HistoryEvent",
    "StateMachine",
    "StatesError",
    "TaskContext",
]
