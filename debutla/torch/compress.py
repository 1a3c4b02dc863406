"""Replace layers of a trained model by DeBut layers in one call, with a report."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from .layers import DeButConv2d, DeButLinear, _DeButBase

__all__ = ["compress", "CompressionReport", "LayerReport", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), biases and norm affines included.

    This is the count behind the DeBut paper's model compression (MC).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class LayerReport:
    """One replaced layer.

    Attributes
    ----------
    name : str
        The submodule's qualified name.
    kind : str
        ``"Linear"`` or ``"Conv2d"``.
    shape : (int, int)
        The matrix the chain serves (``out x in``; for a conv ``c_out x c_in kh kw``).
    chain : str
    params_before, params_after : int
        The layer's parameters (weight and bias) before and after.
    nnz : int
        Factor values (the chain's ``nnz``).
    lc : float
        Layer compression, the paper's ``1 - nnz / (m n)``.
    fit_error : float
        ``||W - D||_F / ||W||_F`` of the initialisation.
    fit_seconds : float
    """

    name: str
    kind: str
    shape: tuple[int, int]
    chain: str
    params_before: int
    params_after: int
    nnz: int
    lc: float
    fit_error: float
    fit_seconds: float


@dataclass
class CompressionReport:
    """What :func:`compress` did.

    Attributes
    ----------
    layers : list of LayerReport
    params_before, params_after : int
        Trainable parameters of the whole model (:func:`count_parameters`).
    mc : float
        Model compression, the paper's ``1 - params_after / params_before``.
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def mc(self) -> float:
        """Model compression ``1 - params_after / params_before`` (0 for an empty model)."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def __str__(self) -> str:
        lines = [f"{'layer':<12} {'shape':>10} {'params':>15} {'LC':>7} {'fit err':>8}  chain"]
        for r in self.layers:
            lines.append(
                f"{r.name:<12} {r.shape[0]:>4}x{r.shape[1]:<5} "
                f"{r.params_before:>7}->{r.params_after:<7} {100 * r.lc:6.2f}% "
                f"{r.fit_error:8.4f}  {r.chain}")
        lines.append(f"model: {self.params_before:,} -> {self.params_after:,} parameters, "
                     f"MC {100 * self.mc:.2f}%")
        return "\n".join(lines)


def compress(model: nn.Module, layers: Mapping[str, Any], method: str = "auto", *,
             inplace: bool = False, flatten: str = "cin_kh_kw", impl: str = "auto",
             **fit: Any) -> tuple[nn.Module, CompressionReport]:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` submodules by DeBut layers fitted to them.

    Parameters
    ----------
    model : nn.Module
    layers : mapping of str to chain
        Qualified submodule names (as in ``model.named_modules()``) to a chain: ``"auto"``,
        a chain string or a :class:`debutla.Chain`.
    method : {"auto", "hierarchical", "als", "random"}
        How the factors are initialised (see :meth:`DeButLinear.from_dense`).
    inplace : bool
        Modify ``model`` itself; by default a deep copy is modified and returned.
    flatten : {"cin_kh_kw", "kh_kw_cin"}
        Filter flattening for conv layers (see :class:`DeButConv2d`).
    impl : {"auto", "numba", "torch"}
    **fit
        More arguments of :func:`debutla.factorize` (``max_sweeps``, ``seed``, ...).

    Returns
    -------
    (model, report) : (nn.Module, CompressionReport)

    Raises
    ------
    ValueError
        If a name is not a submodule of ``model`` or a chain does not fit its layer.
    TypeError
        If a named submodule is not an ``nn.Linear`` or ``nn.Conv2d``.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import compress
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    >>> small, report = compress(net, {"0": "8 <-(2,2,4)- 8 <-(4,8,1)- 16"})
    >>> report.params_before, report.params_after
    (136, 88)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(layers, Mapping):
        raise TypeError(f"compress: layers must be a mapping of submodule names to chains, "
                        f"got {type(layers).__name__}")
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules or name == "":
            raise ValueError(f"compress: {name!r} is not a submodule of the model (have: "
                             f"{[n for n in modules if n][:20]})")
        if not isinstance(modules[name], (nn.Linear, nn.Conv2d)):
            raise TypeError(f"compress: {name!r} is a {type(modules[name]).__name__}; only "
                            f"nn.Linear and nn.Conv2d layers can be replaced")
    before = count_parameters(model)
    if not inplace:
        model = copy.deepcopy(model)
    report = CompressionReport(params_before=before)
    for name, chain in layers.items():
        old = model.get_submodule(name)
        new: _DeButBase
        if isinstance(old, nn.Linear):
            new = DeButLinear.from_dense(old, chain=chain, method=method, impl=impl, **fit)
            kind = "Linear"
        else:
            if not isinstance(old, nn.Conv2d):
                raise RuntimeError(f"internal: compress: {name!r} is neither nn.Linear nor "
                                   f"nn.Conv2d after the check")
            new = DeButConv2d.from_dense(old, chain=chain, method=method, impl=impl,
                                         flatten=flatten, **fit)
            kind = "Conv2d"
        new.train(old.training)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        info = getattr(new, "fit_info", None)
        m, n = new._m, new._n
        report.layers.append(LayerReport(
            name=name, kind=kind, shape=(m, n), chain=new.chain.format(),
            params_before=sum(p.numel() for p in old.parameters()),
            params_after=sum(p.numel() for p in new.parameters()),
            nnz=new.chain.nnz, lc=1.0 - new.chain.nnz / (m * n),
            fit_error=float(new.fit_error),
            fit_seconds=float(info.seconds) if info is not None else 0.0))
    report.params_after = count_parameters(model)
    return model, report
