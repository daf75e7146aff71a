"""Amazon States Language interpreter (JSONPath query language) for running SAM state machines in-process."""

from .errors import DefinitionError, StatesError
from .machine import LAMBDA_INVOKE, Execution, ExecutionResult, HistoryEvent, Retrier, StateMachine, TaskContext, parse_retriers

__all__ = [
    "LAMBDA_INVOKE",
    "DefinitionError",
    "Execution",
    "ExecutionResult",
    "HistoryEvent",
    "Retrier",
    "StateMachine",
    "StatesError",
    "TaskContext",
    "parse_retriers",
]
