"""Replace layers of a trained model by DeBut layers in one call, with a report."""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .._config import config
from .._validation import check_int
from ..backends import numba_ as _nbk
from ..chain import Chain, candidate_chains
from .layers import (CALIBRATION_DAMPING, CALIBRATION_ROWS, DeButConv2d, DeButLinear,
                     _DeButBase, _is_auto, _warning_names)

__all__ = ["compress", "CompressionReport", "LayerReport", "count_parameters",
           "replace_module", "named_layers", "ratio_budget"]

#: Keys of a per-layer specification besides :func:`debutla.factorize`'s arguments.
_SPEC_KEYS = ("chain", "method", "ratio", "flatten", "impl", "calibration_rows",
              "calibration_damping")
#: :func:`debutla.factorize` arguments a specification may carry (``W``, ``chain``,
#: ``method`` and ``return_info`` are compress's own).
_FIT_KEYS = ("max_sweeps", "tol", "seed", "progress", "callback", "init", "order",
             "max_params", "rel_error")


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
    method : str
        How the values were initialised (``"random"`` or a :func:`debutla.factorize`
        method).
    svd_rel_error : float or None
        The weight error of the truncated SVD that stores at most as many values
        (``rank (m + n) <= nnz``), None for ``method="random"``.
    data_rel_error, svd_data_rel_error : float or None
        With calibration inputs ``X``: the output errors ``||X W^T - X D^T|| / ||X W^T||``
        of the fit and of the SVD (the SVD of ``W`` truncated in the data's metric, the
        best output error of that rank); None without calibration.
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
    method: str = "auto"
    svd_rel_error: float | None = None
    data_rel_error: float | None = None
    svd_data_rel_error: float | None = None


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
        data = any(r.data_rel_error is not None for r in self.layers)
        lines = [f"{'layer':<12} {'shape':>10} {'params':>15} {'LC':>7} {'fit err':>8} "
                 f"{'SVD err':>8}" + (f" {'out err':>8} {'SVD out':>8}" if data else "")
                 + "  chain"]

        def num(v: float | None) -> str:
            return f"{v:8.4f}" if v is not None else f"{'-':>8}"

        for r in self.layers:
            lines.append(
                f"{r.name:<12} {r.shape[0]:>4}x{r.shape[1]:<5} "
                f"{r.params_before:>7}->{r.params_after:<7} {100 * r.lc:6.2f}% "
                f"{r.fit_error:8.4f} {num(r.svd_rel_error)}"
                + (f" {num(r.data_rel_error)} {num(r.svd_data_rel_error)}" if data else "")
                + f"  {r.chain}")
        lines.append(f"model: {self.params_before:,} -> {self.params_after:,} parameters, "
                     f"MC {100 * self.mc:.2f}%")
        return "\n".join(lines)


def compress(model: nn.Module, layers: Mapping[str, Any] | Iterable[str],
             method: str = "auto", *, inplace: bool = False, flatten: str = "cin_kh_kw",
             impl: str = "auto", ratio: float | None = None, calibration: Any = None,
             calibration_rows: int | None = CALIBRATION_ROWS,
             calibration_damping: float = CALIBRATION_DAMPING,
             **fit: Any) -> tuple[nn.Module, CompressionReport]:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` submodules by DeBut layers fitted to them.

    Each layer's size is chosen by its chain, or by a budget: ``ratio`` (a fraction of
    the dense weight's values), ``max_params`` (a number of values) or ``rel_error`` (the
    smallest chain whose fit reaches this relative error: of the weight, or of the
    outputs with calibration), given for every layer at once or per layer.  A layer
    whose chain stores as many values as its dense weight, or more, is replaced all the
    same, with a warning.  With ``calibration`` inputs the fits minimise each layer's output
    error on the data the layer sees in ``model``, instead of its weight error.

    Parameters
    ----------
    model : nn.Module
    layers : mapping of str to spec, or sequence of str
        Qualified submodule names (as in ``model.named_modules()``), each mapped to a
        *spec*: a chain (``"auto"``, a chain string or a :class:`debutla.Chain`) or a
        dict of per-layer options, any of ``chain``, ``method``, ``ratio``,
        ``max_params``, ``rel_error``, ``flatten``, ``impl``, ``calibration_rows``,
        ``calibration_damping`` and the other :func:`debutla.factorize` arguments
        (``seed``, ``max_sweeps``, ...); they override the options given to
        ``compress``.  A sequence of names means ``"auto"`` for each.
    method : {"auto", "hierarchical", "als", "random"}
        How the factors are initialised (see :meth:`DeButLinear.from_dense`).
    inplace : bool
        Modify ``model`` itself; by default a deep copy is modified and returned.
    flatten : {"cin_kh_kw", "kh_kw_cin"}
        Filter flattening for conv layers (see :class:`DeButConv2d`).
    impl : {"auto", "numba", "torch", "cuda"}
    ratio : float, optional
        For ``chain="auto"``: at most ``floor(ratio m n)`` values for an ``m x n``
        weight (the paper's layer compression is ``1 - ratio`` or more); ``0 < ratio
        <= 1``.  Not with ``max_params``.
    calibration : Tensor, tuple or dict, optional
        Inputs of ``model``: ``model(calibration)`` (a tuple is unpacked as positional
        arguments, a dict as keyword arguments) is run once, in eval mode and without
        gradients, and every named layer's inputs are recorded (forward pre-hooks) and
        used as its calibration inputs (see :meth:`DeButLinear.from_dense`).  All
        layers see the original model's activations.
    calibration_rows : int or None
        At most this many calibration rows per layer (drawn at random, seeded): a
        conv layer has one row per image and output position.
    calibration_damping : float
        The damping of the data-aware fits (see :meth:`DeButLinear.from_dense`).
    **fit
        More arguments of :func:`debutla.factorize` (``max_params``, ``rel_error``,
        ``max_sweeps``, ``seed``, ...).

    Returns
    -------
    (model, report) : (nn.Module, CompressionReport)

    Raises
    ------
    ValueError
        If a name is not a submodule of ``model``, a chain does not fit its layer, a
        budget is impossible (smaller than every chain) or out of range; raised before
        any layer is fitted.
    TypeError
        If a named submodule is not an ``nn.Linear`` or ``nn.Conv2d``, or a spec is
        neither a chain nor a dict of known options.

    Notes
    -----
    Kernels compiling in a background thread when ``compress`` starts are waited for,
    and any kernel it needs compiles in the calling thread: Numba's compiler swaps
    Python's process-wide warning filters while it runs, which would otherwise drop or
    misroute the fits' warnings (the layer's name is put on them without swapping
    anything).

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import compress
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    >>> small, report = compress(net, {"0": "8 <-(2,2,4)- 8 <-(4,8,1)- 16"})
    >>> report.params_before, report.params_after
    (136, 88)
    >>> net = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(),
    ...                           torch.nn.Linear(128, 10))
    >>> small, report = compress(net, {"0": {"ratio": 0.1}},
    ...                          calibration=torch.randn(512, 256))
    >>> report.layers[0].nnz <= 0.1 * 256 * 128
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Mapping, Iterable)):
        raise TypeError(f"compress: layers must be a mapping of submodule names to chains "
                        f"or options, or a sequence of names, got {type(layers).__name__}")
    if not isinstance(layers, Mapping):
        layers = {name: "auto" for name in layers}
    modules = named_layers(model, layers, "compress")
    specs: dict[str, dict] = {}
    for name, spec in layers.items():
        specs[name] = _layer_spec(name, modules[name], spec, method, flatten, impl, ratio,
                                  calibration_rows, calibration_damping, fit)
    # Numba's compiler swaps the process-wide warning filters while it compiles
    # (warnings.catch_warnings), so a kernel compiling in a background thread could drop
    # or misroute the fits' warnings: let such compiles finish, and compile any kernel
    # this call needs in this thread
    _nbk.wait_for_compiles()
    with config(background=False):
        return _compress(model, modules, specs, calibration, inplace)


def _compress(model: nn.Module, modules: dict, specs: dict, calibration: Any,
              inplace: bool) -> tuple[nn.Module, CompressionReport]:
    """:func:`compress` after its checks: record the inputs, fit, replace, report."""
    inputs = _record_inputs(model, modules, list(specs), calibration)
    before = count_parameters(model)
    if not inplace:
        model = copy.deepcopy(model)
    report = CompressionReport(params_before=before)
    for name, opts in specs.items():
        old = model.get_submodule(name)
        opts = dict(opts)
        if inputs is not None:
            opts["calibration"] = inputs[name]
        new: _DeButBase
        # the layer's name on the fit's warnings (thread-local: see _warning_names)
        with _warning_names(f"compress: layer {name!r}"):
            try:
                if isinstance(old, nn.Linear):
                    opts.pop("flatten")
                    new = DeButLinear.from_dense(old, **opts)
                    kind = "Linear"
                else:
                    if not isinstance(old, nn.Conv2d):
                        raise RuntimeError(f"internal: compress: {name!r} is neither "
                                           f"nn.Linear nor nn.Conv2d after the check")
                    new = DeButConv2d.from_dense(old, **opts)
                    kind = "Conv2d"
            except (ValueError, TypeError) as e:
                raise type(e)(f"compress: layer {name!r}: {_strip_where(str(e))}") from None
        if new.chain.nnz >= new._m * new._n:
            warnings.warn(f"compress: layer {name!r}: the chain {new.chain} stores "
                          f"{new.chain.nnz:,} values, not fewer than the dense weight's "
                          f"{new._m * new._n:,}: no compression (ask for a smaller size: "
                          f"ratio, max_params, or a larger rel_error)", UserWarning,
                          stacklevel=2)
        new.train(old.training)
        replace_module(model, name, new)
        info = getattr(new, "fit_info", None)
        m, n = new._m, new._n
        report.layers.append(LayerReport(
            name=name, kind=kind, shape=(m, n), chain=new.chain.format(),
            params_before=sum(p.numel() for p in old.parameters()),
            params_after=sum(p.numel() for p in new.parameters()),
            nnz=new.chain.nnz, lc=1.0 - new.chain.nnz / (m * n),
            fit_error=float(new.fit_error),
            fit_seconds=float(info.seconds) if info is not None else 0.0,
            method=opts["method"],
            svd_rel_error=None if info is None else info.svd_rel_error,
            data_rel_error=None if info is None else info.data_rel_error,
            svd_data_rel_error=None if info is None else info.svd_data_rel_error))
    report.params_after = count_parameters(model)
    return model, report


def named_layers(model: nn.Module, names: Iterable[Any], where: str) -> dict[str, nn.Module]:
    """``model.named_modules()``, after checking that every one of ``names`` is a
    replaceable layer: an ``nn.Linear`` or a ``groups=1`` ``nn.Conv2d`` of ``model``.
    """
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or name not in modules or name == "":
            raise ValueError(f"{where}: {name!r} is not a submodule of the model (have: "
                             f"{[n for n in modules if n][:20]})")
        mod = modules[name]
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{where}: {name!r} is a {type(mod).__name__}; only "
                            f"nn.Linear and nn.Conv2d layers can be replaced")
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            raise ValueError(f"{where}: {name!r} is a grouped convolution "
                             f"(groups={mod.groups}); only groups=1 layers can be "
                             f"replaced (one chain serves the whole filter bank)")
    return modules


def ratio_budget(ratio: Any, m: int, n: int, where: str) -> int:
    """The value budget ``floor(ratio m n)`` (at least 1) of an ``m x n`` weight."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) \
            or not 0 < float(ratio) <= 1:
        raise ValueError(f"{where}: ratio must be a number in (0, 1], got {ratio!r}")
    return max(1, math.floor(float(ratio) * m * n))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (a qualified name, not "") of ``model`` is."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _strip_where(msg: str) -> str:
    """A layer method's message without its ``DeButLinear.from_dense: `` prefix."""
    for where in ("DeButLinear.from_dense: ", "DeButConv2d.from_dense: "):
        if msg.startswith(where):
            return msg[len(where):]
    return msg


def _weight(module: nn.Module) -> torch.Tensor:
    """A dense layer's weight tensor."""
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"compress: the layer's weight is a {type(w).__name__}, not a tensor")
    return w


def _weight_shape(module: nn.Module) -> tuple[int, int]:
    """The ``m x n`` matrix a layer's chain serves."""
    w = _weight(module)
    return int(w.shape[0]), int(math.prod(w.shape[1:]))


def _layer_spec(name: str, module: nn.Module, spec: Any, method: str, flatten: str,
                impl: str, ratio: Any, calibration_rows: Any, calibration_damping: Any,
                fit: dict) -> dict:
    """``from_dense`` keyword arguments for one layer, checked (nothing fitted)."""
    where = f"compress: layer {name!r}"
    opts: dict[str, Any] = {"chain": "auto", "method": method, "flatten": flatten,
                            "impl": impl, "ratio": ratio,
                            "calibration_rows": calibration_rows,
                            "calibration_damping": calibration_damping, **fit}
    budget_keys = ("ratio", "max_params", "rel_error")
    if isinstance(spec, Mapping):
        unknown = sorted(str(k) for k in spec if k not in _SPEC_KEYS + _FIT_KEYS)
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {unknown}; a layer's options are "
                            f"{sorted(_SPEC_KEYS + _FIT_KEYS)}")
        own = dict(spec)
    elif isinstance(spec, (str, Chain)):
        own = {"chain": spec}
    else:
        raise TypeError(f"{where}: the spec must be a chain ('auto', a chain string or a "
                        f"debutla.Chain) or a dict of options, got {type(spec).__name__}")
    if any(k in own for k in budget_keys) or not _is_auto(own.get("chain", "auto")):
        # the call's budget serves the layers without a size of their own: a per-layer
        # budget or an explicit chain replaces it
        for k in budget_keys:
            opts.pop(k, None)
    opts.update(own)
    r = opts.pop("ratio", None)
    m, n = _weight_shape(module)
    if r is not None:
        if opts.get("max_params") is not None:
            raise ValueError(f"{where}: give ratio or max_params, not both")
        opts["max_params"] = ratio_budget(r, m, n, where)
    budget: Any = opts.get("max_params")
    if not _is_auto(opts["chain"]):
        for k in ("max_params", "rel_error"):
            if opts.get(k) is not None:
                raise ValueError(f"{where}: a budget ({'ratio or ' if k == 'max_params' else ''}"
                                 f"{k}) chooses the chain, so it needs chain='auto'; got "
                                 f"chain {opts['chain']}")
            opts.pop(k, None)
    elif budget is not None:
        budget = check_int(budget, "max_params", where=where)
        candidate_chains(m, n, max_params=budget, where=f"{where}: max_params")
    for k in ("max_params", "rel_error"):
        if opts.get(k) is None:
            opts.pop(k, None)
    return opts


def _record_inputs(model: nn.Module, modules: dict, names: list[str],
                   calibration: Any) -> dict[str, torch.Tensor] | None:
    """Each named layer's inputs while ``model`` runs on ``calibration`` (None: none)."""
    if calibration is None:
        return None
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen[name].append(args[0].detach().cpu())
        return hook

    handles = [modules[name].register_forward_pre_hook(recorder(name)) for name in names]
    modes = {mod: mod.training for mod in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            try:
                if isinstance(calibration, tuple):
                    model(*calibration)
                elif isinstance(calibration, Mapping):
                    model(**calibration)
                else:
                    model(calibration)
            except Exception as e:
                raise ValueError(f"compress: calibration: the model failed on the "
                                 f"calibration inputs ({type(e).__name__}: {e}); give "
                                 f"inputs the model takes (a tuple is unpacked as "
                                 f"positional arguments, a dict as keyword arguments)"
                                 ) from e
    finally:
        for h in handles:
            h.remove()
        for mod, mode in modes.items():
            mod.training = mode
    missing = [name for name in names if not seen[name]]
    if missing:
        raise ValueError(f"compress: calibration: layers {missing} were not called when "
                         f"the model ran on the calibration inputs, so they have no "
                         f"calibration data")
    out = {}
    for name, xs in seen.items():
        if len(xs) == 1:
            out[name] = xs[0]
        else:  # a layer called several times: every call's rows
            lin = isinstance(modules[name], nn.Linear)
            out[name] = torch.cat([x.reshape(-1, x.shape[-1]) if lin else
                                   (x if x.dim() == 4 else x.unsqueeze(0)) for x in xs])
    return out
