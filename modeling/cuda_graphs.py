"""CUDA graphs of whole inference forwards: what the Mamba LM's decoding step and the vision backbones
(``config.use_cuda_graph``) replay instead of launching each kernel from Python.

On a GPU, a Vim-S forward of 128 images at 224 px runs 17 ms of kernels but takes 29 ms of host work (Python, dispatch
and about 500 launches; H200, benchmarks/README.md). A CUDA graph captured from one forward replays all of its kernels
at once. A graph bakes in what the Python code decided while it was captured (which kernels, which tensors), so one is
replayed only while ``graph_fingerprint`` of the model is unchanged: every parameter and buffer where it was, each
module's train flag, hooks and plain settings (PEFT adapters enabled, active, merged, scaling), the config's settings,
global hooks, autocast and the backend variable. Parameters updated in place (an optimizer step) are read by the
replay as they are.

``ForwardGraphs`` is the vision backbones' store: a forward with a new input shape runs eagerly once, the second one
with that shape is captured, later ones replay; at most ``MAX_GRAPHS`` shapes are kept a model. Outputs are returned as
fresh tensors (the graph's own are overwritten by its next replay). A replay is launched first and the fingerprint
compared while the GPU runs it (the host's ~2 ms overlap the kernels instead of preceding them): each graph holds
every parameter and buffer it was captured with, so a stale replay never reads freed memory; its outputs are then
dropped and the forward runs eagerly. (Tensors a user replaced therefore stay allocated until the next forward.)
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

# module types with no Python setting that changes what a captured forward computes (their tensors and hooks are in
# the fingerprint); every other module's plain attributes are
_NO_SETTINGS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.ModuleList)


_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # torch's own bookkeeping (parameters, hooks, ...), not settings
_PLAIN_TYPES = (bool, int, float, str, type(None))


def _plain(v):
    """v if it is a plain setting (a number, string, None or a flat container of them), else Ellipsis."""
    if type(v) in _PLAIN_TYPES or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple, set, frozenset)) and all(isinstance(x, (bool, int, float, str)) for x in v):
        return tuple(sorted(v, key=repr)) if isinstance(v, (set, frozenset)) else tuple(v)
    if isinstance(v, dict) and all(isinstance(x, (bool, int, float, str)) for x in v.values()):
        return tuple(sorted(v.items(), key=repr))
    return Ellipsis  # not a setting: left out


def _settings(obj) -> tuple:
    """(name, value) of obj's plain settings (see _plain), torch's module bookkeeping left out."""
    out = []
    for k, v in vars(obj).items():
        if k in _MODULE_INTERNALS:
            continue
        v = _plain(v)
        if v is not Ellipsis:
            out.append((k, v))
    return tuple(out)


def graph_fingerprint(model: nn.Module) -> tuple:
    """What a graph captured from ``model`` depends on besides its inputs (see the module docstring): about 2 ms of
    host time on the 2-core CI machine for a Vim-S (270 modules, 410 tensors)."""
    modules, tensors = [], []
    for m in model.modules():
        modules.append((id(m), type(m), m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks),
                        () if type(m) in _NO_SETTINGS else _settings(m)))
        for group in (m._parameters, m._buffers):
            for t in group.values():
                if t is not None:
                    tensors.append((t.data_ptr(), t.dtype, t.shape))
    config = getattr(model, "config", None)
    hooks = nn.modules.module
    try:
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    except (TypeError, AttributeError):  # an older torch
        autocast = (torch.is_autocast_enabled(),)
    return (tuple(modules), tuple(tensors), () if config is None else _settings(config),
            len(getattr(hooks, "_global_forward_hooks", ())), len(getattr(hooks, "_global_forward_pre_hooks", ())),
            autocast, os.environ.get("SSMVL_SSM_BACKEND"))


def graphs_apply(model: nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether ``model``'s forward on ``inputs`` may go through ``ForwardGraphs``: ``config.use_cuda_graph``,
    inference (eval mode, no gradients), CUDA tensor inputs, not inside torch.compile or another capture."""
    return (bool(getattr(model.config, "use_cuda_graph", False)) and not model.training
            and not torch.is_grad_enabled() and all(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)
            and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing())


def capture(fn: Callable, inputs: Tuple[torch.Tensor, ...]):
    """(graph, its outputs) of ``fn(*inputs)``, after one warm-up call on a side stream (kernel compilation, allocator).
    Autocast's cache of cast weights is off meanwhile: a graph must cast inside itself, not read casts that the
    enclosing autocast region frees when it ends."""
    device = inputs[0].device
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn(*inputs)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn(*inputs)
    finally:
        torch.set_autocast_cache_enabled(cache)
    return graph, outputs


class ForwardGraphs:
    """A model's captured forwards by input signature (see the module docstring). Weakly keyed by the model, so a
    deleted model frees its graphs and copy.deepcopy / pickling never meet one."""

    MAX_GRAPHS = 2
    _store: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    @classmethod
    def release(cls, model: nn.Module):
        """Frees ``model``'s captured forwards."""
        cls._store.pop(model, None)

    @classmethod
    def count(cls, model: nn.Module) -> int:
        """Captured forwards kept for ``model``."""
        return sum(entry["graph"] is not None for entry in cls._store.get(model, {}).values())

    @staticmethod
    def _replay(entry: dict, inputs: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        for static, t in zip(entry["inputs"], inputs):
            static.copy_(t)
        entry["graph"].replay()
        return tuple(t.clone() for t in entry["outputs"])

    @classmethod
    def run(cls, model: nn.Module, fn: Callable, inputs: Tuple[torch.Tensor, ...],
            key: tuple = ()) -> Optional[Tuple[torch.Tensor, ...]]:
        """``fn(*inputs)`` (a tuple of tensors) by replaying a graph of it, or None where the caller should run it
        itself (the first call with this signature, or the first after the fingerprint changed). ``key``: other
        arguments ``fn`` depends on. A captured graph is replayed before the fingerprint is compared (see the module
        docstring)."""
        graphs = cls._store.setdefault(model, OrderedDict())
        signature = (key, tuple((tuple(t.shape), t.stride(), t.dtype, str(t.device)) for t in inputs))
        entry = graphs.get(signature)
        outputs = cls._replay(entry, inputs) if entry is not None and entry["graph"] is not None else None
        fingerprint = graph_fingerprint(model)
        if entry is None or entry["fingerprint"] != fingerprint:
            if outputs is not None:  # a stale replay: let it finish before its graph and tensors are let go
                torch.cuda.current_stream(inputs[0].device).synchronize()
            graphs[signature] = {"fingerprint": fingerprint, "graph": None}
            graphs.move_to_end(signature)
            while len(graphs) > cls.MAX_GRAPHS:
                graphs.popitem(last=False)
            return None
        if outputs is None:  # met twice: capture it, keeping what it reads alive with it
            entry["inputs"] = tuple(t.clone() for t in inputs)
            entry["graph"], entry["outputs"] = capture(fn, entry["inputs"])
            entry["tensors"] = tuple(t.detach() for m in model.modules() for group in (m._parameters, m._buffers)
                                     for t in group.values() if t is not None)
            outputs = cls._replay(entry, inputs)
        graphs.move_to_end(signature)
        return outputs


__all__ = ["graph_fingerprint", "graphs_apply", "capture", "ForwardGraphs"]
