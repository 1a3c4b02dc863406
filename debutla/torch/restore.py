"""Load a compressed model's state dict into a freshly built (dense) model."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ._ops import parse_chain
from .compress import replace_module
from .layers import DeButConv2d, DeButLinear, _DeButBase

__all__ = ["load_compressed"]

_SUFFIX = "_extra_state"


def _debut_states(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """The DeBut layers' extra states of ``state_dict``, by module name."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.endswith(_SUFFIX):
            continue
        if isinstance(value, Mapping) and "chain" in value and "shape" in value:
            out[key[: -len(_SUFFIX)].rstrip(".")] = dict(value)
    return out


def load_compressed(model: nn.Module, state_dict: Mapping[str, Any], *,
                    strict: bool = True, impl: str = "auto") -> nn.Module:
    """Load the state dict of a compressed model into ``model``, built with dense layers.

    After :func:`compress` and fine-tuning, ``torch.save(small.state_dict(), path)``
    stores every DeBut layer's chain with its values (the layer's extra state).  In a
    fresh process, build the original architecture and call
    ``load_compressed(model, torch.load(path))``: every ``nn.Linear`` / ``nn.Conv2d``
    whose name carries a DeBut state is replaced by a DeBut layer with the saved chain
    (and, for a conv, the saved filter flattening), then ``model.load_state_dict`` loads
    the values.  No pickle is needed (``torch.load``'s default ``weights_only=True``
    reads such a state dict).

    Parameters
    ----------
    model : nn.Module
        The architecture, with dense layers where the compressed model had DeBut layers
        (layers that are DeBut layers already are kept as they are).
    state_dict : mapping
        A compressed model's ``state_dict()``.
    strict : bool
        Passed to ``model.load_state_dict``.
    impl : {"auto", "numba", "torch", "cuda"}
        Product implementation of the new layers.

    Returns
    -------
    nn.Module
        ``model`` itself, modified in place.

    Raises
    ------
    ValueError
        If a DeBut state names a module that ``model`` lacks, or whose shape differs
        from the saved one (and as ``load_state_dict``).
    TypeError
        If that module is neither ``nn.Linear`` nor ``nn.Conv2d``.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import compress, load_compressed
    >>> def make():
    ...     return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    >>> small, _ = compress(make(), {"0": "8 <-(2,2,4)- 8 <-(4,8,1)- 16"})
    >>> fresh = load_compressed(make(), small.state_dict())
    >>> type(fresh[0]).__name__, torch.equal(fresh[0].factors[0], small[0].factors[0])
    ('DeButLinear', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_compressed: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_compressed: state_dict must be a mapping (a model's "
                        f"state_dict()), got {type(state_dict).__name__}")
    modules = dict(model.named_modules())
    for name, state in _debut_states(state_dict).items():
        where = f"load_compressed: layer {name!r}"
        if name not in modules:
            raise ValueError(f"{where}: the state dict holds a DeBut layer there but the "
                             f"model has no such submodule (is it the same architecture?)")
        old = modules[name]
        if isinstance(old, _DeButBase):
            continue  # load_state_dict checks its chain
        if not name:
            raise ValueError("load_compressed: the state dict is a DeBut layer's; load it "
                             "into a DeButLinear / DeButConv2d built with its chain")
        try:
            chain = parse_chain(str(state["chain"]))
        except ValueError as e:
            raise ValueError(f"{where}: the saved chain cannot be parsed: {e}") from None
        new: _DeButBase
        if isinstance(old, nn.Linear):
            new = DeButLinear.like(old, chain, impl=impl)
        elif isinstance(old, nn.Conv2d):
            new = DeButConv2d.like(old, chain, impl=impl,
                                   flatten=str(state.get("flatten", "cin_kh_kw")))
            saved_k = tuple(state.get("kernel_size", new.kernel_size))
            if saved_k != new.kernel_size:
                raise ValueError(f"{where}: the saved layer has kernel size {saved_k}, the "
                                 f"model's conv {new.kernel_size}")
        else:
            raise TypeError(f"{where}: the state dict holds a DeBut layer there but the "
                            f"model's module is a {type(old).__name__}, not an nn.Linear "
                            f"or nn.Conv2d")
        if tuple(state["shape"]) != (new._m, new._n):
            raise ValueError(f"{where}: the saved layer serves a "
                             f"{tuple(state['shape'])} matrix, the model's "
                             f"{type(old).__name__} a {(new._m, new._n)} one")
        new.train(old.training)
        replace_module(model, name, new)
    model.load_state_dict(state_dict, strict=strict)
    return model
