"""Parameter sweeps: run every combination of a few node inputs and lay the images out in labelled grids.

>>> s = ck.sweep(wf, {out.cfg: [4, 7, 10], out.steps: [10, 20]}, engine)    # doctest: +SKIP
>>> s.figure                 # columns cfg=4/7/10, rows steps=10/20
>>> s.images[(7, 20)]        # the image for cfg=7, steps=20
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .result import Result

# -- input references -----------------------------------------------------------------------------------------
# The graph layer hands out InputRef objects (``out.cfg``); ``(node, "cfg")`` tuples are accepted too.


def input_ref(field_ref: Any) -> Any:
    """The graph layer's InputRef for ``out.cfg`` (an InputRef) or ``(node, "cfg")``; a clear error otherwise."""
    if isinstance(field_ref, tuple) and len(field_ref) == 2 and isinstance(field_ref[1], str):
        node, name = field_ref
        try:
            ref = getattr(node, name)
        except AttributeError:
            raise ValueError(f"node {node!r} has no input {name!r}") from None
        if _is_ref(ref):
            return ref
        raise ValueError(f"{name!r} of {node!r} is not a widget input (it is {ref!r}); sweep/PromptBox fields "
                         "must be widget inputs such as text, seed, steps or cfg")
    if _is_ref(field_ref):
        return field_ref
    if hasattr(field_ref, "node") and hasattr(field_ref, "to_api"):  # an Output: the input is linked
        raise TypeError(f"{field_ref!r} is a linked output, not a widget input; forms and sweeps edit literal "
                        "inputs such as text, seed, steps or cfg")
    raise TypeError(f"expected a node input such as out.cfg or (node, 'cfg'), got {field_ref!r}; "
                    "write the attribute of a node (pos.text), not its current value")


def _is_ref(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("node", "name", "set")) and not isinstance(obj, (str, bytes))


def node_id(ref: Any) -> str:
    """The id of the node an InputRef belongs to."""
    node = ref.node
    for attr in ("id", "node_id"):
        value = getattr(node, attr, None)
        if value is not None and not callable(value):
            return str(value)
    return str(node)


def node_class(ref: Any) -> str:
    """The class_type of the node an InputRef belongs to ("" when unknown)."""
    node = ref.node
    for attr in ("class_type", "type"):
        value = getattr(node, attr, None)
        if isinstance(value, str):
            return value
    return ""


def ref_key(ref: Any) -> tuple[str, str]:
    """(node id, input name): the identity of an input, whatever the graph layer's object looks like."""
    return (node_id(ref), ref.name)


def ref_value(ref: Any) -> Any:
    return ref.value


def spec_get(ref: Any, key: str, default: Any = None) -> Any:
    """One entry (type, min, max, step, choices, multiline, ...) of an input's schema spec."""
    spec = getattr(ref, "spec", None)
    if spec is None:
        return default
    if isinstance(spec, Mapping):
        value = spec.get(key, default)
    else:
        value = getattr(spec, key, default)
    return default if value is None else value


def labels_for(refs: Sequence[Any]) -> list[str]:
    """Short labels: the input name, with the node id added where two inputs share a name."""
    names = [r.name for r in refs]
    return [f"{r.name}#{node_id(r)}" if names.count(r.name) > 1 else r.name for r in refs]


# -- sweeps ---------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Images and Results of every combination, keyed by the tuple of values in axis order, plus grids."""

    axes: list[tuple[str, list[Any]]]
    images: dict[tuple, Any] = field(default_factory=dict)
    results: dict[tuple, Result] = field(default_factory=dict)
    figures: list[Any] = field(default_factory=list)

    @property
    def figure(self) -> Any:
        """The X/Y grid (the first one when a third axis makes one grid per value)."""
        return self.figures[0] if self.figures else None

    @property
    def combinations(self) -> list[tuple]:
        return list(self.results)

    @property
    def executed(self) -> list[str]:
        """Every node id executed across the sweep, with repeats (cached nodes are not in it)."""
        return [n for r in self.results.values() for n in r.executed]

    def __getitem__(self, combination: Any) -> Any:
        key = combination if isinstance(combination, tuple) else (combination,)
        return self.images[key]

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        axes = ", ".join(f"{name}={values}" for name, values in self.axes)
        return f"SweepResult({axes}; {len(self.results)} runs, {len(self.figures)} figure(s))"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        for fig in self.figures:
            display(fig)


def _check_values(refs: list[Any], values: list[list[Any]], labels: list[str]) -> None:
    """Validate every value of every axis before the first run, then put the originals back."""
    for ref, vals, label in zip(refs, values, labels):
        original = ref.value
        try:
            for v in vals:
                try:
                    ref.set(v)
                except (ValidationError, ValueError, TypeError) as exc:
                    raise ValidationError(f"sweep axis {label!r} (node {node_id(ref)}): value {v!r} is not "
                                          f"accepted: {exc}") from None
        finally:
            ref.set(original)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="sweep", unit="run")


def sweep(wf: Any, axes: Mapping[Any, Iterable[Any]], backend: Any, *, progress: bool = True,
          **options: Any) -> SweepResult:
    """Run ``wf`` once per combination of ``axes`` values on ``backend``; grids: x = 1st axis, y = 2nd, one per 3rd.

    Inputs are edited in place and restored afterwards; unchanged nodes (loader, text encoders) come from the
    backend's cache. ``progress`` shows a tqdm bar (a widget in notebooks); ``options`` go to
    ``backend.submit``, and an ``on_event`` callback among them receives every run's events.
    """
    if not axes:
        raise ValueError("sweep() needs at least one axis, e.g. {out.cfg: [4, 7, 10]}")
    if len(axes) > 3:
        raise ValueError(f"sweep() takes at most 3 axes (x, y, one grid per z value); got {len(axes)}")
    refs = [input_ref(k) for k in axes]
    if len({ref_key(r) for r in refs}) != len(refs):
        raise ValueError("sweep() got the same input twice as an axis")
    values = []
    for ref, vals in zip(refs, axes.values()):
        vals = [vals] if isinstance(vals, (str, bytes)) else list(vals)
        if not vals:
            raise ValueError(f"sweep axis {ref.name!r} has no values")
        values.append(vals)
    labels = labels_for(refs)
    _check_values(refs, values, labels)

    out = SweepResult(axes=list(zip(labels, values)))
    originals = [r.value for r in refs]
    # x varies fastest so consecutive runs differ in one input and the cache keeps everything upstream of it
    order = [tuple(reversed(combo)) for combo in itertools.product(*reversed(values))]
    bar = _progress_bar(len(order), progress)
    user_callback = options.pop("on_event", None)
    where = ""

    def on_event(event: Any) -> None:
        if bar is not None and event.type == "progress":  # the sampler's steps inside the current run
            bar.set_postfix_str(f"{where} step {event.data.get('value')}/{event.data.get('max')}")
        if user_callback is not None:
            user_callback(event)

    try:
        for combo in order:
            for ref, v in zip(refs, combo):
                ref.set(v)
            where = ", ".join(f"{lab}={v}" for lab, v in zip(labels, combo))
            if bar is not None:
                bar.set_postfix_str(where)
            try:
                result = backend.submit(wf, on_event=on_event, **options).result()
            except Exception as exc:
                exc.add_note("in sweep combination " + ", ".join(f"{lab}={v}" for lab, v in zip(labels, combo)))
                raise
            out.results[combo] = result
            out.images[combo] = result.image
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for ref, v in zip(refs, originals):
            ref.set(v)
    out.figures = _figures(out, labels, values)
    return out


def _figures(out: SweepResult, labels: list[str], values: list[list[Any]]) -> list[Any]:
    from . import plot

    if any(im is None for im in out.images.values()):
        return []  # a workflow without image outputs: nothing to draw
    if len(values) == 1:
        return [plot.xy_grid(out.images, values[0], xlabel=labels[0])]
    if len(values) == 2:
        return [plot.xy_grid(out.images, values[0], values[1], xlabel=labels[0], ylabel=labels[1])]
    figs = []
    for z in values[2]:
        sub = {(x, y): out.images[(x, y, z)] for x in values[0] for y in values[1]}
        figs.append(plot.xy_grid(sub, values[0], values[1], xlabel=labels[0], ylabel=labels[1],
                                 title=f"{labels[2]}={z}"))
    return figs


class _CallableModule(types.ModuleType):
    """Importing ``comfykit.sweep`` rebinds the package attribute ``ck.sweep`` to this module, so the module
    itself must stay callable for ``ck.sweep(wf, axes, backend)`` to keep working."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepResult:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
