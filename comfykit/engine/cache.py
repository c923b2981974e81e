"""ComfyUI's input-signature caches: node ids are not in the key, so identical sub-graphs share one entry.

The key of a node is its class, its ``IS_CHANGED`` value and its constant inputs, followed by the same for each
ancestor in a fixed DFS order, with links written as ``("ANCESTOR", index, socket)``. Three policies:

* ``classic``: after each prompt is set, drop every entry the prompt does not use (A -> B -> A re-runs A);
* ``lru``: keep the entries of the last prompts while there are more than ``size`` of them;
* ``none``: forget everything at each prompt.
"""

from __future__ import annotations

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
    """The cache key of every node of ``prompt``.

    ``changed(node_id)`` gives the node's normalised ``IS_CHANGED`` value and ``unique(node_id)`` says whether
    the node id belongs in the key (NOT_IDEMPOTENT nodes and nodes taking the hidden UNIQUE_ID).
    """
    immediate: dict[str, tuple] = {}

    def immediate_sig(node_id: str, order: dict[str, int]) -> tuple:
        node = prompt[node_id]
        parts: list[Any] = [node["class_type"], changed(node_id)]
        if unique(node_id):
            parts.append(node_id)
        inputs = node.get("inputs", {})
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value) and value[0] in prompt:
                parts.append((name, ("ANCESTOR", order[value[0]], value[1])))
            else:
                parts.append((name, to_hashable(value)))
        return tuple(parts)

    out: dict[str, Any] = {}
    for node_id in prompt:
        ancestors: list[str] = []
        order: dict[str, int] = {}
        _ordered_ancestry(prompt, node_id, ancestors, order)
        key = [immediate_sig(node_id, order)]
        for anc in ancestors:
            # each ancestor's own signature uses its own ancestry indices (ComfyUI computes them per ancestor)
            if anc not in immediate:
                a_anc: list[str] = []
                a_order: dict[str, int] = {}
                _ordered_ancestry(prompt, anc, a_anc, a_order)
                immediate[anc] = immediate_sig(anc, a_order)
            key.append(immediate[anc])
        out[node_id] = tuple(key)
    return out


def _ordered_ancestry(prompt: dict[str, Any], node_id: str, ancestors: list[str], order: dict[str, int]) -> None:
    """DFS over sorted input names; the first time an ancestor is seen fixes its index."""
    # iterative pre-order DFS, equivalent to the recursive walk but safe on very long chains
    work: list[tuple[str, list[str]]] = [(node_id, sorted(prompt[node_id].get("inputs", {})))]
    while work:
        current, names = work[-1]
        if not names:
            work.pop()
            continue
        name = names.pop(0)
        value = prompt[current].get("inputs", {}).get(name)
        if is_link(value) and value[0] in prompt and value[0] not in order:
            anc = value[0]
            ancestors.append(anc)
            order[anc] = len(ancestors) - 1
            work.append((anc, sorted(prompt[anc].get("inputs", {}))))


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
