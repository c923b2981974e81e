"""Opt-in ``torch.compile`` of the diffusion network, and channels-last weights for the convolutional models.

``Engine(compile=True)`` (or a mode such as ``"max-autotune"``, or a dict of ``torch.compile`` keyword arguments)
gives the engine's :class:`~comfykit.engine.models.manager.ModelManager` one :class:`Compiler`. Every diffusion
model it loads carries it (``DiffusionModel.compiled``), and ``DiffusionModel.apply`` calls the network through it.

What keeps recompiles rare:

* one compiled function per network class (``type(network).forward``), called with the network as an argument:
  dynamo lifts the parameters to graph inputs and guards on their shapes and dtypes, not on which objects they
  are, so a reloaded model, a LoRA clone (new tensors for its patched layers) or a new LoRA strength reuses the
  compiled graph;
* parameters are set ``requires_grad=False`` (as LoRA's patched ones are): a mismatch there is a guard failure;
* the batch size and the text length are marked dynamic, so they do not recompile (batch 1 is still its own graph:
  torch specialises sizes 0 and 1); heights and widths stay static (inductor cannot lower the UNet with symbolic
  ones), so each new resolution compiles once.

A model being streamed (partial loading, ``offload.stream``) runs eagerly: its hooks swap weights in and out of
the device during the forward, which a compiled graph cannot follow. If compiling fails (no C++ compiler, no
Triton, an unsupported operation) the network runs eagerly from then on, after one warning.

>>> engine = Engine("models", compile=True)                              # doctest: +SKIP
>>> engine = Engine("models", compile={"mode": "max-autotune", "dynamic": False})  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: ``compile=`` strings taken as torch.compile modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: recompiles allowed per network class before dynamo runs it eagerly (SD1, SDXL, a refiner, batch 1 and 2, ...)
RECOMPILE_LIMIT = 16


def compile_options(compile: bool | str | dict[str, Any] | None) -> dict[str, Any] | None:  # noqa: A002
    """``Engine(compile=...)`` as ``torch.compile`` keyword arguments, or None when compiling is off."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, str):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r} is not a torch.compile mode; use True, one of "
                             f"{', '.join(map(repr, COMPILE_MODES))}, or a dict of torch.compile arguments")
        return {} if compile == "default" else {"mode": compile}
    if isinstance(compile, dict):
        allowed = set(inspect.signature(torch.compile).parameters) - {"model"}
        unknown = sorted(set(compile) - allowed)
        if unknown:
            raise ValueError(f"compile={compile!r}: torch.compile takes no {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(allowed))}")
        return dict(compile)
    raise TypeError(f"compile={compile!r}: use True, a mode string or a dict of torch.compile arguments")


def _mark_dynamic(args: tuple, kwargs: dict[str, Any]) -> None:
    """Batch sizes and text lengths may change between runs without a recompile; spatial sizes stay static.

    Why static: inductor (torch 2.13) cannot lower the UNet with symbolic heights and widths (a ValueRangeError in
    the stride-2 convolutions' size arithmetic), so a new resolution compiles its own graph instead.
    """
    mark = torch._dynamo.maybe_mark_dynamic  # "maybe": a size the graph must fix is specialised, not an error
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim:
            mark(value, 0)
            if value.ndim == 3:  # [B, tokens, width] text: 77, 154, 231 ... tokens
                mark(value, 1)
            elif value.ndim >= 4:  # latents, extra channels: keep dynamo from making H and W symbolic
                for dim in range(2, value.ndim):
                    torch._dynamo.mark_static(value, dim)


class Compiler:
    """``torch.compile`` for diffusion networks: one compiled forward per network class, eager on failure.

    ``compiler.bind(network)`` is what ``DiffusionModel.apply`` calls in place of the network.
    ``compiler.failed`` names the classes that fell back to eager; ``compiler.eager_calls`` counts calls that ran
    eagerly because the model was being streamed.
    """

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})
        self.failed: dict[str, str] = {}  # class name -> why it runs eagerly
        self.eager_calls = 0
        self._compiled: dict[type, Any] = {}
        self._warned_streaming = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Compiler({self.options or 'default'}{', failed: ' + ', '.join(self.failed) if self.failed else ''})"

    def _function(self, cls: type) -> Any:
        with self._lock:
            fn = self._compiled.get(cls)
            if fn is None:
                options = dict(self.options)
                params = inspect.signature(torch.compile).parameters
                if "recompile_limit" in params:  # torch >= 2.12: the limit and the entries are this engine's own
                    options.setdefault("recompile_limit", RECOMPILE_LIMIT)
                    options.setdefault("isolate_recompiles", True)
                fn = self._compiled[cls] = torch.compile(cls.forward, **options)
            return fn

    def bind(self, network: nn.Module) -> Any:
        """A callable that runs ``network(...)`` compiled (or eagerly where it cannot be compiled)."""
        return _Bound(self, network)

    def run(self, network: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """``network(*args, **kwargs)``, compiled when it can be."""
        cls = type(network)
        if cls.__name__ in self.failed:
            return network(*args, **kwargs)
        if "_comfykit_device" in network.__dict__:  # partially loaded: hooks stream weights during the forward
            self.eager_calls += 1
            if not self._warned_streaming:
                self._warned_streaming = True
                warnings.warn(f"{cls.__name__} is partially loaded (its weights stream to the device layer by "
                              "layer), which torch.compile cannot follow: it runs eagerly while streamed. Free "
                              "memory or use a smaller model to run it compiled", stacklevel=4)
            return network(*args, **kwargs)
        fn = self._function(cls)
        _freeze(network)
        _mark_dynamic(args, kwargs)
        try:
            return fn(network, *args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            # compiling failed, or the network itself raised while traced: eager tells which
            out = network(*args, **kwargs)
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            self.failed[cls.__name__] = reason
            warnings.warn(f"torch.compile of {cls.__name__} failed ({type(exc).__name__}: {reason}); it runs "
                          "eagerly from now on. Install a C++ compiler (CPU) or Triton (CUDA), or run without "
                          "compile=", stacklevel=4)
            return out


class _Bound:
    """``network`` called through a Compiler: what the family's ``forward`` sees as the network."""

    def __init__(self, compiler: Compiler, network: nn.Module):
        self.compiler = compiler
        self.network = network

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiler.run(self.network, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # families may read the network's attributes
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.network, name)


def _freeze(network: nn.Module) -> None:
    """Inference weights: ``requires_grad`` False everywhere, as LoRA's patched tensors are (a guard checks it)."""
    if network.__dict__.get("_comfykit_frozen"):
        return
    network.requires_grad_(False)
    network._comfykit_frozen = True


# -- channels-last --------------------------------------------------------------------------------------------------
def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D weight of ``module`` channels-last, in place (the same Parameter objects), and return it.

    cuDNN's NHWC convolutions then skip layout transposes; activations follow the weights' layout, so a UNet or
    VAE runs channels-last from its first convolution without the inputs being converted.
    """
    for t in (*module.parameters(), *module.buffers()):
        if t.ndim == 4 and t.numel() and not t.is_contiguous(memory_format=torch.channels_last):
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module
