"""ComfyUI's prompt validation (``execution.validate_prompt``) with its exact error shapes, written from the facts.

Deep chains are validated without recursion: each node's check is a generator that yields the upstream node
ids it needs, so a 10,000-node chain does not hit Python's recursion limit.
"""

from __future__ import annotations

import difflib
import gc
import math
import traceback
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, NamedTuple

from ..errors import ValidationError
from .comfy_nodes import unknown_node_hint
from .schema import InputSpec, Schema, types_match

#: Longest ``dependent_outputs`` list of one node error: ComfyUI's lists grow with every failing output after the
#: node, so 10,000 failing outputs would make an answer of 10^8 entries.
MAX_DEPENDENT_OUTPUTS = 100

_COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


class ValidatedPrompt(NamedTuple):
    """A prompt that passed: the coerced copy, the valid output node ids, errors of outputs that failed."""

    prompt: dict
    outputs: list[str]
    node_errors: dict


def check_value(spec: InputSpec, value: Any) -> tuple[Any, dict | None]:
    """Coerce and range/choice-check one literal value as ComfyUI does; returns (value, error or None)."""
    name, info = spec.name, spec.raw
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    convert = _COERCE.get(spec.type)
    if convert is not None and (type(value) is not convert or convert is float):  # skip int(int), str(str)
        try:
            value = convert(value)
            if convert is float and not math.isfinite(value):
                # NaN passes every min/max comparison, runs, and then breaks the JSON of /history.
                raise ValueError(f"{value} is not a finite number")
        except Exception as exc:  # ComfyUI reports whatever int()/float() raised
            return value, {"type": "invalid_input_type",
                           "message": f"Failed to convert an input value to a {spec.type} value",
                           "details": f"{name}, {value}, {exc}",
                           "extra_info": {"input_name": name, "input_config": info, "received_value": value,
                                          "exception_message": str(exc)}}
    lo, hi = spec.options.get("min"), spec.options.get("max")
    try:
        if lo is not None and value < lo:
            return value, {"type": "value_smaller_than_min", "message": f"Value {value} smaller than min of {lo}",
                           "details": name, "extra_info": {"input_name": name, "input_config": info,
                                                           "received_value": value}}
        if hi is not None and value > hi:
            return value, {"type": "value_bigger_than_max", "message": f"Value {value} bigger than max of {hi}",
                           "details": name, "extra_info": {"input_name": name, "input_config": info,
                                                           "received_value": value}}
    except TypeError:
        pass  # a non-number against min/max: ComfyUI's comparison would raise; leave it to the node
    if spec.list_combo and not spec.any_value and value not in spec.choices:
        long = len(spec.choices) > 20
        shown = f"(list of length {len(spec.choices)})" if long else str(spec.choices)
        return value, {"type": "value_not_in_list", "message": "Value not in list",
                       "details": f"{name}: '{value}' not in {shown}",
                       "extra_info": {"input_name": name, "input_config": None if long else info,
                                      "received_value": value}}
    return value, None


# Nodes whose VALIDATE_INPUTS in ComfyUI takes these inputs: their combo check is replaced by "the file exists",
# and a failure is reported as custom_validation_failed. Annotated names ("x.png [output]") point elsewhere.
_FILE_VALIDATED = {"LoadImage": "image", "LoadImageMask": "image"}
_ANNOTATIONS = (" [input]", " [output]", " [temp]")


def check_input(class_type: str, spec: InputSpec, value: Any) -> tuple[Any, dict | None]:
    """:func:`check_value` plus the custom file check ComfyUI runs for LoadImage-like nodes."""
    if not spec.list_combo or _FILE_VALIDATED.get(class_type) != spec.name:
        return check_value(spec, value)
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    if spec.any_value or value in spec.choices or (isinstance(value, str) and value.endswith(_ANNOTATIONS)):
        return value, None
    return value, {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                   "details": f"{spec.name} - Invalid image file: {value}", "extra_info": {"input_name": spec.name}}


def _missing(name: str) -> dict:
    return {"type": "required_input_missing", "message": "Required input is missing", "details": name,
            "extra_info": {"input_name": name}}


def _exception_info(exc: BaseException) -> tuple[str, list[str]]:
    return type(exc).__name__, traceback.format_tb(exc.__traceback__)


def _check_node(prompt: dict, schema: Schema, node_id: str, coerced: dict, validated: dict,
                checked: dict) -> Generator[str, tuple, tuple]:
    """One node's checks; yields an upstream id and receives its (valid, reasons, id) result.

    ``checked`` memoises widget checks by (input spec, value) for the whole prompt.
    """
    node = prompt[node_id]
    inputs = node["inputs"]
    spec = schema[node["class_type"]]
    errors: list[dict] = []
    valid = True
    for name, ispec in spec.inputs.items():
        if name not in inputs:
            if ispec.required:
                errors.append(_missing(name))
            continue
        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append({"type": "bad_linked_input",
                               "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                               "details": name, "extra_info": {"input_name": name, "input_config": ispec.raw,
                                                               "received_value": value}})
                continue
            # As in ComfyUI, a missing node or output index raises here and fails the caller's check.
            upstream = prompt[value[0]]
            received = schema[upstream["class_type"]].outputs[value[1]]
            expected = ispec.type
            if not types_match(received, expected):
                errors.append({"type": "return_type_mismatch",
                               "message": "Return type mismatch between linked nodes",
                               "details": f"{name}, received_type({received}) mismatch input_type({expected})",
                               "extra_info": {"input_name": name, "input_config": ispec.raw,
                                              "received_type": received, "linked_node": value}})
                continue
            try:
                result = yield value[0]
                if result[0] is False:
                    valid = False
                    continue
            except Exception as exc:
                valid = False
                exc_type, tb = _exception_info(exc)
                validated[value[0]] = (False, [{
                    "type": "exception_during_inner_validation", "message": "Exception when validating inner node",
                    "details": str(exc),
                    "extra_info": {"input_name": name, "input_config": ispec.raw, "exception_message": str(exc),
                                   "exception_type": exc_type, "traceback": tb, "linked_node": value}}], value[0])
                continue
        else:
            try:  # the same widget value on the same input checks the same: big generated prompts repeat them
                key = (id(ispec), spec.name, type(value), value)
                new, error = checked[key]
            except TypeError:  # an unhashable value (a list widget, a dict): check it every time
                new, error = check_input(spec.name, ispec, value)
            except KeyError:
                new, error = checked[key] = check_input(spec.name, ispec, value)
            if error is not None:
                errors.append(error)
                continue
            coerced[name] = new
    if errors or valid is not True:
        return (False, errors, node_id)
    return (True, [], node_id)


def _validate_output(prompt: dict, schema: Schema, output: str, coerced: dict[str, dict],
                     validated: dict, checked: dict) -> tuple:
    """Run the checks from one output node up, memoised in ``validated``, with an explicit stack."""
    if output in validated:
        return validated[output]
    in_progress = {output}
    stack = [(output, _check_node(prompt, schema, output, coerced.setdefault(output, {}), validated, checked))]
    node_id, gen = stack[-1]
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            child = gen.throw(throw) if throw is not None else gen.send(send)
        except StopIteration as stop:
            validated[node_id] = send = stop.value
            in_progress.discard(node_id)
            stack.pop()
            if not stack:
                return send
            node_id, gen = stack[-1]
            throw = None
            continue
        except Exception as exc:
            in_progress.discard(node_id)
            stack.pop()
            if not stack:
                raise
            node_id, gen = stack[-1]
            send, throw = None, exc
            continue
        throw = None
        send = validated.get(child)
        if send is None:
            if child in in_progress:
                send = (True, [], child)  # a cycle: ComfyUI reports it when executing, not here
            else:
                in_progress.add(child)
                node_id, gen = child, _check_node(prompt, schema, child, coerced.setdefault(child, {}), validated,
                                                  checked)
                stack.append((node_id, gen))


def validate_prompt(prompt: dict, schema: Any = None, partial_targets: list[str] | None = None) -> ValidatedPrompt:
    """Validate an API-format prompt like ComfyUI's ``POST /prompt``; raise ValidationError with its 400 body.

    >>> validate_prompt({"1": {"class_type": "KSampler", "inputs": {}}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    comfykit.errors.ValidationError: Prompt has no outputs...
    """
    schema = Schema.load(schema)
    with paused_gc():
        return _validate(prompt, schema, partial_targets)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off the cyclic garbage collector: building 100k small dicts otherwise triggers full collections over
    the whole prompt, half the time of validating it. Anything cyclic made here is collected once it is back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _validate(prompt: dict, schema: Schema, partial_targets: list[str] | None) -> ValidatedPrompt:
    targets = None if partial_targets is None else set(partial_targets)  # O(1) lookups for 100k targets
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            _fail({"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type "
                   "property.", "details": f"Node ID '#{node_id}'", "extra_info": {}})
        class_type = node["class_type"]
        if not isinstance(class_type, str):
            _fail({"type": "invalid_prompt", "message": "Cannot execute because a node's class_type is not a "
                   "string.", "details": f"Node ID '#{node_id}'", "extra_info": {}},
                  f"got {type(class_type).__name__}; write the node's class name, e.g. \"KSampler\"")
        if not isinstance(node.get("inputs", {}), dict):
            _fail({"type": "invalid_prompt", "message": "Cannot execute because a node's inputs are not an "
                   "object.", "details": f"Node ID '#{node_id}'", "extra_info": {}},
                  "inputs must map input names to values or [node_id, output_index] links")
        spec = schema.get(class_type)
        if spec is None:
            hint = unknown_node_hint(class_type, schema.names())
            _fail({"type": "invalid_prompt", "message": f"Cannot execute because node {class_type} does not exist.",
                   "details": f"Node ID '#{node_id}'", "extra_info": {}}, hint)
        if spec.output_node and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        _fail({"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
              "add an output node such as SaveImage or PreviewImage")

    validated: dict[str, tuple] = {}
    coerced: dict[str, dict] = {}
    checked: dict[tuple, tuple] = {}
    good: list[str] = []
    failed: list[tuple[str, list]] = []
    failing_outputs: list[str] = []
    first_seen: dict[str, int] = {}  # failing node -> index into failing_outputs when it was first listed
    scanned = 0  # validated entries already looked at (dicts keep insertion order)
    for output in outputs:
        try:
            valid, reasons, _ = _validate_output(prompt, schema, output, coerced, validated, checked)
        except Exception as exc:
            exc_type, tb = _exception_info(exc)
            valid, reasons = False, [{"type": "exception_during_validation", "message": "Exception when validating "
                                      "node", "details": str(exc),
                                      "extra_info": {"exception_type": exc_type, "traceback": tb}}]
            validated[output] = (False, reasons, output)
        if valid is True:
            good.append(output)
            continue
        if reasons:
            failed.append((output, reasons))
        # Like ComfyUI: every failing node seen so far is listed, with the outputs being validated when it was
        # and every failing output after it. Only new entries are scanned, so this stays linear.
        new = list(islice(reversed(validated), len(validated) - scanned))  # entries are only ever added
        for node_id in reversed(new):
            ok, why, _ = validated[node_id]
            if ok is not True and why and node_id not in first_seen:
                first_seen[node_id] = len(failing_outputs)
        scanned = len(validated)
        failing_outputs.append(output)
    node_errors: dict[str, dict] = {}
    for node_id, start in first_seen.items():
        node_errors[node_id] = {"errors": validated[node_id][1],
                                "dependent_outputs": failing_outputs[start:start + MAX_DEPENDENT_OUTPUTS],
                                "class_type": prompt[node_id]["class_type"]}
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                 "details": details, "extra_info": {}}
        raise ValidationError(describe_errors(error, node_errors, schema), error, node_errors)
    result = {}
    for node_id, node in prompt.items():
        copy = dict(node)
        copy["inputs"] = {**node.get("inputs", {}), **coerced.get(node_id, {})}
        result[node_id] = copy
    return ValidatedPrompt(result, good, node_errors)


def _fail(error: dict, hint: str = "") -> None:
    message = error["message"] + (f" ({error['details']})" if error["details"] else "")
    raise ValidationError(message + (f"; {hint}" if hint else ""), error, {})


def _suggest(word: str, options: list) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def explain(error: dict, spec: InputSpec | None = None) -> str:
    """A readable sentence for one per-input error dict, with what is accepted and a did-you-mean."""
    info = error.get("extra_info") or {}
    kind = error["type"]
    value = info.get("received_value")
    if kind == "value_not_in_list" and spec is not None and spec.choices is not None:
        if not spec.choices:  # an empty file list: say so instead of "is not one of " and nothing
            return (f"{value!r} is not available: there is nothing to choose from (for a file input, put the "
                    "file into its folder, e.g. models/checkpoints for ckpt_name)")
        hint = _suggest(value, spec.choices)
        shown = ", ".join(repr(c) for c in spec.choices[:10]) + (", ..." if len(spec.choices) > 10 else "")
        return f"{value!r} is not one of {shown}" + (f"; {hint}" if hint else "")
    if kind in ("value_smaller_than_min", "value_bigger_than_max") and spec is not None:
        return f"{value!r} is out of range; accepted: {spec.min} to {spec.max}"
    if kind == "invalid_input_type":
        return f"{value!r} is not a valid {spec.type if spec else 'value'} ({info.get('exception_message')})"
    if kind == "custom_validation_failed" and spec is not None and spec.choices is not None:
        if not spec.choices:
            return f"{error['details']} (the folder has no files to choose from)"
        hint = _suggest(error["details"].rsplit(": ", 1)[-1], spec.choices)
        return f"{error['details']}" + (f"; {hint}" if hint else "")
    if kind == "return_type_mismatch":
        return (f"linked to an output of type {info.get('received_type')} (node {info['linked_node'][0]}), "
                f"but it takes {spec.type if spec else '?'}")
    if kind == "required_input_missing":
        return "required input is missing; set it" + (f" (type {spec.type})" if spec else "")
    return f"{error['message']}: {error.get('details', '')}"


def describe_errors(error: dict, node_errors: dict, schema: Schema | None = None) -> str:
    """The message of a ValidationError: the prompt-level line, then one line per node error."""
    lines = [error["message"] + (f": {error['details']}" if error.get("details") and not node_errors else "")]
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type", "?")
        spec = schema.get(class_type) if schema is not None else None
        for err in entry.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            ispec = spec.inputs.get(name) if spec is not None and name else None
            where = f"node {node_id} ({class_type})" + (f" input '{name}'" if name else "")
            lines.append(f"  {where}: {explain(err, ispec)}")
    return "\n".join(lines)


def find_cycle(prompt: dict) -> list[str] | None:
    """Node ids forming a dependency cycle through links, or None."""
    state: dict[str, int] = {}
    for root in prompt:
        if root in state:
            continue
        path: list[str] = []
        stack = [(root, iter(_parents(prompt, root)))]
        state[root] = 1
        path.append(root)
        while stack:
            node_id, parents = stack[-1]
            nxt = next(parents, None)
            if nxt is None:
                state[node_id] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state and nxt in prompt:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(_parents(prompt, nxt))))
    return None


def _parents(prompt: dict, node_id: str) -> list[str]:
    inputs = prompt[node_id].get("inputs") or {}
    return [v[0] for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
