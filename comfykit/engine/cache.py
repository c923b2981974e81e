"""ComfyUI's input-signature caches: node ids are not in the key, so identical sub-graphs share one entry.

The key of a node is a digest of its class, its ``IS_CHANGED`` value and its constant inputs, with each link
written as the linked node's own key (see :func:`signatures`). Three policies:

* ``classic``: after each prompt is set, drop every entry the prompt does not use (A -> B -> A re-runs A);
* ``lru``: keep the entries of the last prompts while there are more than ``size`` of them;
* ``none``: forget everything at each prompt.
"""

from __future__ import annotations

import hashlib
import marshal
import os
from collections.abc import Callable
from typing import Any

CACHE_MODES = ("classic", "lru", "none")


def is_link(value: Any) -> bool:
    """A ``[node_id, output_index]`` reference in an API prompt."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def to_hashable(value: Any) -> Any:
    """A hashable, order-preserving stand-in for nested prompt values."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, dict):
        return ("__dict__",) + tuple(sorted((k, to_hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("__list__",) + tuple(to_hashable(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("__set__",) + tuple(sorted(to_hashable(v) for v in value))
    return ("__unhashable__", id(value))  # an object input makes the node unique, never shared by accident


class _Never:
    """IS_CHANGED value that equals nothing, not even itself: ComfyUI's NaN, without identity shortcuts."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return "<changed>"


def changed_value(value: Any) -> Any:
    """Normalise an ``IS_CHANGED`` result; NaN (or an exception, passed as NaN) means "always re-run"."""
    if isinstance(value, float) and value != value:
        return _Never()
    return to_hashable(value)


def signatures(prompt: dict[str, Any], changed: Callable[[str], Any],
               unique: Callable[[str], bool]) -> dict[str, Any]:
    """The cache key of every node of ``prompt``, in time linear in nodes plus links.

    ``changed(node_id)`` gives the node's normalised ``IS_CHANGED`` value and ``unique(node_id)`` says whether
    the node id belongs in the key (NOT_IDEMPOTENT nodes and nodes taking the hidden UNIQUE_ID).

    A key is a digest of the node's class, ``IS_CHANGED`` value and constants, with each link written as the
    linked node's key and socket. It equals another node's key exactly when ComfyUI's ancestry signature
    would, except that two identical branches count as one: a node fed by two identical copies of a sub-graph
    shares the entry of one fed twice by one copy (their outputs are the same). Spelling out each ancestry as
    ComfyUI does makes keys of a chain grow with its length, which is quadratic over the prompt.
    """
    keys: dict[str, bytes] = {}
    expanded: set[str] = set()  # nodes whose parents were pushed: a parent expanded but unkeyed is a cycle
    for root in prompt:
        if root in keys:
            continue
        stack = [root]
        while stack:  # iterative post-order DFS: parents get their keys first; safe on very long chains
            node_id = stack[-1]
            if node_id in keys:
                stack.pop()
                continue
            node = prompt[node_id]
            inputs = node.get("inputs") or {}
            parts: list[Any] = [node["class_type"], None]  # [1]: IS_CHANGED and unique id, set by _digest
            waiting = False
            for name in sorted(inputs):
                value = inputs[name]
                kind = type(value)
                if kind is str or kind is int:  # the common constants, already hashable and spelled one way
                    parts.append((name, value))
                    continue
                if ((kind is list or kind is tuple) and len(value) == 2 and type(value[0]) is str
                        and type(value[1]) is int):
                    parent = value[0]
                    key = keys.get(parent)
                    if key is not None:
                        parts.append((name, "LINK", key, value[1]))
                        continue
                    if parent in prompt and parent not in expanded:
                        stack.append(parent)
                        waiting = True
                        continue
                # a constant, a link to a missing node, or a link back into a cycle (reported when executing)
                parts.append((name, _stable(to_hashable(value))))
            expanded.add(node_id)
            if not waiting:
                keys[node_id] = _digest(parts, changed(node_id), unique(node_id) and node_id)
                stack.pop()
    return keys


def _digest(parts: list[Any], is_changed: Any, unique_id: str | bool) -> bytes:
    """The key of one node from its class and inputs (``parts``), ``IS_CHANGED`` value and unique id."""
    if isinstance(is_changed, _Never):  # "always re-run": a key nothing else has, so its descendants re-run too
        is_changed = ("__never__", os.urandom(16))
    parts[1] = (_stable(is_changed), unique_id or None)
    # marshal's version 2 writes equal values as equal bytes (no back-references, no interning flags) and is
    # 5x faster than repr; _stable has made every value a plain int, float, str, None or tuple of them
    return hashlib.blake2b(marshal.dumps(parts, 2), digest_size=16).digest()


def _stable(value: Any) -> Any:
    """``value`` with numbers that compare equal spelled alike (True, 1 and 1.0; 0.0 and -0.0), and subclasses
    (numpy floats, IntEnums, str enums) as their plain type, which marshal can write."""
    if type(value) is tuple:
        return tuple(_stable(v) for v in value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else float(value)
    if isinstance(value, int):  # bool included
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)  # the characters; str() of a str enum would give "Mode.FAST"
    return value


class SignatureCache:
    """Node outputs (or ui entries) keyed by input signature, with ComfyUI's eviction policies."""

    def __init__(self, mode: str = "classic", size: int = 0):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache={mode!r} is not a cache mode; use one of {', '.join(CACHE_MODES)}")
        if mode == "lru" and size <= 0:
            raise ValueError(f"cache='lru' needs cache_size > 0 (got {size})")
        self.mode, self.size = mode, size
        self._data: dict[Any, Any] = {}
        self._used: dict[Any, int] = {}  # key -> generation of last use (lru)
        self._generation = 0
        self._min_generation = 0
        self._keys: dict[str, Any] = {}  # node_id -> key for the current prompt

    def __len__(self) -> int:
        return len(self._data)

    def set_prompt(self, keys: dict[str, Any]) -> None:
        """Start a prompt whose nodes have these keys, then evict per policy."""
        self._keys = dict(keys)
        if self.mode == "none":
            self._data.clear()
            return
        if self.mode == "classic":
            live = set(self._keys.values())
            for key in [k for k in self._data if k not in live]:
                del self._data[key]
            return
        self._generation += 1
        for key in self._keys.values():
            if key in self._data:
                self._used[key] = self._generation
        while len(self._data) > self.size and self._min_generation < self._generation:
            self._min_generation += 1
            for key in [k for k in self._data if self._used.get(k, 0) < self._min_generation]:
                del self._data[key]
                self._used.pop(key, None)

    def get(self, node_id: str) -> Any:
        key = self._keys.get(node_id)
        if key is None:
            return None
        value = self._data.get(key)
        if value is not None and self.mode == "lru":
            self._used[key] = self._generation
        return value

    def set(self, node_id: str, value: Any) -> None:
        key = self._keys[node_id]
        self._data[key] = value
        if self.mode == "lru":
            self._used[key] = self._generation

    def clear(self) -> None:
        self._data.clear()
        self._used.clear()


class ObjectCache:
    """Node instances per ``(node_id, class_type)``, dropped when the prompt no longer has that pair."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], Any] = {}

    def set_prompt(self, prompt: dict[str, Any]) -> None:
        live = {(nid, node["class_type"]) for nid, node in prompt.items()}
        for key in [k for k in self._objects if k not in live]:
            del self._objects[key]

    def get(self, node_id: str, class_type: str, factory: Callable[[], Any]) -> Any:
        key = (node_id, class_type)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = factory()
        return obj

    def clear(self) -> None:
        self._objects.clear()
