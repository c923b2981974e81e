"""comfykit's errors survive pickling with their data (what the pool relies on to send them between processes)."""

from __future__ import annotations

import pickle

import pytest

from comfykit.errors import ExecutionError, InterruptedError, ModelError, ServerError, ValidationError


def roundtrip(exc):
    return pickle.loads(pickle.dumps(exc))


def test_validation_error_keeps_its_400_body_and_message():
    node_errors = {"3": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                     "details": "sampler_name: 'eulr' not in [...]", "extra_info": {}}],
                         "dependent_outputs": ["9"], "class_type": "KSampler"}}
    error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
             "details": "", "extra_info": {}}
    exc = ValidationError("Prompt outputs failed validation\n  node 3 ...", error, node_errors)
    back = roundtrip(exc)
    assert type(back) is ValidationError and str(back) == str(exc)
    assert back.to_dict() == exc.to_dict()


def test_execution_and_interrupted_errors_keep_their_data():
    data = {"prompt_id": "p", "node_id": "3", "node_type": "KSampler", "exception_type": "RuntimeError",
            "exception_message": "boom", "traceback": ["  File x\n"], "executed": ["4"]}
    exc = ExecutionError(data)
    exc.__cause__ = RuntimeError("the node's own error stays behind")
    back = roundtrip(exc)
    assert type(back) is ExecutionError and back.data == data and str(back) == str(exc)
    assert (back.node_id, back.exception_message, back.traceback) == ("3", "boom", ["  File x\n"])

    stop = roundtrip(InterruptedError({"prompt_id": "p", "node_id": "5", "node_type": "VAEDecode"}))
    assert type(stop) is InterruptedError and stop.node_id == "5" and "node 5 (VAEDecode)" in str(stop)


@pytest.mark.parametrize("cls", [ModelError, ServerError])
def test_plain_errors_keep_their_message(cls):
    back = roundtrip(cls("file is truncated"))
    assert type(back) is cls and str(back) == "file is truncated"


class NodeFailed(ExecutionError):
    """A user's subclass (module level, so pickle can find it)."""


def test_subclasses_stay_subclasses():
    back = roundtrip(NodeFailed({"node_id": "1"}))
    assert type(back) is NodeFailed and back.node_id == "1"
