"""``DeButLinear`` and ``DeButConv2d``: drop-in replacements of ``nn.Linear`` / ``nn.Conv2d``."""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_int, check_real
from ..chain import Chain, design_chain
from ..operator import DeBut
from ._ops import IMPLS, debut_mm, packed_values, parse_chain

if TYPE_CHECKING:
    from ..fit.api import FitInfo

__all__ = ["DeButLinear", "DeButConv2d", "FLATTENS"]

#: Orders in which a conv filter ``(c_out, c_in, kh, kw)`` is flattened to the matrix the
#: chain serves: ``"cin_kh_kw"`` is ``weight.reshape(c_out, -1)`` (the order of
#: ``F.unfold``), ``"kh_kw_cin"`` is ``weight.permute(0, 2, 3, 1).reshape(c_out, -1)``
#: (the DeBut authors' code).
FLATTENS = ("cin_kh_kw", "kh_kw_cin")
_STATE_VERSION = 1
#: Default ``calibration_rows`` of ``from_dense``: rows drawn from the calibration inputs.
CALIBRATION_ROWS = 16384
#: Default ``calibration_damping`` of ``from_dense`` (a fraction of the data's mean energy).
CALIBRATION_DAMPING = 0.01
#: ALS sweeps of a calibrated fit when ``max_sweeps`` is not given (``factorize``'s own
#: default is 100): a sweep in the data's metric solves systems of size ``in_features``
#: (about 2 s at 2304 inputs), and on the paper's LeNet 20 sweeps kept all but 0.08
#: points of the accuracy 100 sweeps give, in a third of the time (docs/torch.rst).
CALIBRATED_MAX_SWEEPS = 20


_WARN_AS = threading.local()


@contextlib.contextmanager
def _warning_names(prefix: str) -> Iterator[None]:
    """The fits' warnings in this thread start with ``prefix`` (``compress``: the layer).

    A thread-local setting, not ``warnings.catch_warnings`` (which swaps process-wide
    state: a Numba compile in a background thread entering and leaving its own
    ``catch_warnings`` meanwhile could drop or misroute the warning).
    """
    old = getattr(_WARN_AS, "prefix", None)
    _WARN_AS.prefix = prefix
    try:
        yield
    finally:
        _WARN_AS.prefix = old


def _resolve_chain(chain: Any, m: int, n: int, where: str) -> Chain:
    """A chain serving an ``m x n`` matrix, or a ValueError/TypeError naming ``where``."""
    if isinstance(chain, str):
        if chain == "auto":
            return design_chain(m, n)
        try:
            chain = parse_chain(chain)
        except ValueError as e:
            raise ValueError(f"{where}: cannot parse chain {chain!r}: {e}") from None
    elif isinstance(chain, DeBut):
        chain = chain.chain
    if not isinstance(chain, Chain):
        raise TypeError(f"{where}: chain must be 'auto', a chain string or a debutla.Chain, "
                        f"got {type(chain).__name__}")
    P, Q = chain.shape
    if P < m or Q < n:
        raise ValueError(f"{where}: the chain's size {P}x{Q} cannot serve the layer's "
                         f"{m}x{n} matrix (a chain must be at least as large: P >= {m} "
                         f"outputs and Q >= {n} inputs; larger chains zero-pad): {chain}")
    return chain


def _check_impl(impl: str, where: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"{where}: impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _pack_after_load(module: "_DeButBase", incompatible_keys) -> None:
    """``load_state_dict`` post hook: ``assign=True`` replaces the parameters (unpacked)."""
    module._pack()


class _DeButBase(nn.Module):
    """Shared parts: the factor parameters, the chain as extra state, conversions."""

    _m: int
    _n: int
    _fan_in: int
    chain: Chain
    impl: str
    factors: nn.ParameterList
    bias: nn.Parameter | None
    # Set by ``from_dense`` (None for ``method="random"``).
    fit_info: FitInfo | None
    fit_error: float

    def _init_factors(self, chain: Chain, bias: bool, fan_in: int, device, dtype) -> None:
        kw = {"device": device, "dtype": dtype}
        self.chain = chain
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.empty(spec.value_shape, **kw)) for spec in chain])
        self._pack()
        self.register_load_state_dict_post_hook(_pack_after_load)
        if bias:
            self.bias = nn.Parameter(torch.empty(self._m, **kw))
        else:
            self.register_parameter("bias", None)
        self._fan_in = fan_in
        self.reset_parameters()

    def _pack(self) -> None:
        """Put the factor values of a CPU layer back to back in one buffer, in chain order.

        Each parameter stays its own ``nn.Parameter`` (optimisers, state dicts and
        ``torch.save`` see no difference) but views its part of the buffer, so the CPU
        kernels read the values where they are, without the operator cache's check of
        them (``debutla.torch._ops._live_operator``: products of 3 rows or more, in
        inference and in training).  Called at construction, after ``.to()``,
        ``.double()`` and the like, after ``load_state_dict`` (``assign=True`` replaces
        the parameters) and after ``copy.deepcopy`` or unpickling, which give each
        parameter a storage of its own; a no-op when the values are packed already
        (``share_memory()`` moves the buffer as a whole), on other devices, and for a
        layer without factors.  A layer whose values are not packed (a parameter
        replaced) works the same, with the check.
        """
        if "factors" not in self._modules:  # unpickling an incomplete module: nothing yet
            return
        vals = self._values()
        if not vals or vals[0].device.type != "cpu" or packed_values(vals) is not None:
            return
        with torch.no_grad():
            buf = torch.empty(sum(v.numel() for v in vals), dtype=vals[0].dtype)
            at = 0
            for p in vals:
                part = buf[at:at + p.numel()].view(p.shape)
                part.copy_(p)
                p.data = part
                at += p.numel()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._pack()
        return out

    def __setstate__(self, state) -> None:
        # copy.deepcopy and unpickling: a deep copy clones each parameter on its own
        super().__setstate__(state)
        self._pack()

    def _values(self) -> list:
        """The factor parameters as a list, in chain order.

        Read from the ParameterList's parameter dict (about 1 us) rather than by
        iterating it (about 8 us for seven factors: an index check and ``getattr`` per
        item); the iteration serves any list this shortcut does not describe.
        """
        vals = list(self.factors._parameters.values())
        if len(vals) != len(self.factors):  # pragma: no cover - a non-Parameter entry
            vals = list(self.factors)
        return vals

    def reset_parameters(self) -> None:
        """Random values: each factor ``N(0, 1/s)``, scaled so that for a dense chain the
        product's entries have ``nn.Linear``'s default variance ``1 / (3 fan_in)``; the bias
        is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` as in ``nn.Linear``.
        """
        Q = self.chain.shape[1]
        with torch.no_grad():
            for i, (p, spec) in enumerate(zip(self.factors, self.chain)):
                std = 1.0 / math.sqrt(spec.s)
                if i == 0:
                    std *= math.sqrt(Q / (3.0 * self._fan_in))
                p.normal_(0.0, std)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self._fan_in)
                self.bias.uniform_(-bound, bound)

    # -- state ---------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        """The layer's extra state for ``state_dict``.

        Returns
        -------
        dict
            ``version``, the chain string ``chain``, the matrix ``shape`` ``(m, n)`` and
            the layer's configuration that the factors depend on (for a conv layer
            ``flatten`` and ``kernel_size``).
        """
        return {"version": _STATE_VERSION, "chain": self.chain.format(),
                "shape": (self._m, self._n), **self._extra_config()}

    def set_extra_state(self, state: Any) -> None:
        """Check a saved extra state against this layer (``load_state_dict``).

        Nothing is changed: the layer must already have the saved chain and configuration.

        Parameters
        ----------
        state : dict
            As returned by :meth:`get_extra_state`.

        Raises
        ------
        ValueError
            If ``state`` is not a DeBut layer's, or its chain, shape or configuration differ
            from this layer's.
        """
        name = type(self).__name__
        if not isinstance(state, dict) or "chain" not in state:
            raise ValueError(f"{name}.load_state_dict: the extra state is not a DeBut "
                             f"layer's (got {type(state).__name__})")
        chain = parse_chain(state["chain"])
        if chain != self.chain or tuple(state.get("shape", ())) != (self._m, self._n):
            raise ValueError(
                f"{name}.load_state_dict: the saved layer has chain {chain} serving "
                f"{tuple(state.get('shape', ()))}, this layer has chain {self.chain} serving "
                f"{(self._m, self._n)}; build the layer with the saved chain first")
        for k, v in self._extra_config().items():
            if k in state and state[k] != v:
                raise ValueError(f"{name}.load_state_dict: saved {k}={state[k]!r} but this "
                                 f"layer has {k}={v!r}")

    def _extra_config(self) -> dict:
        return {}

    def _flat(self, w: torch.Tensor) -> torch.Tensor:
        """A dense layer's weight as the matrix the chain serves (a Linear's as it is)."""
        return w

    def _weight_matrix(self, w: torch.Tensor) -> np.ndarray:
        """A dense layer's weight as that matrix, in float64 on the CPU (the fits' input)."""
        return self._flat(w.detach()).cpu().double().numpy()

    # -- products ------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of factor values (parameters without the bias)."""
        return self.chain.nnz

    def dense_weight(self) -> torch.Tensor:
        """The ``m x n`` matrix ``D`` the chain computes (differentiable)."""
        first = self.factors[0]
        eye = torch.eye(self._n, dtype=first.dtype, device=first.device)
        return debut_mm(eye, self._values(), self.chain, (self._m, self._n),
                        self.impl).t()

    def to_debut(self) -> DeBut:
        """The factors as a :class:`debutla.DeBut` operator (NumPy, the layer's dtype).

        The bias is not part of the operator.
        """
        vals = [p.detach().cpu().numpy() for p in self.factors]
        return DeBut(self.chain, vals, shape=(self._m, self._n))

    def _load_debut(self, op: DeBut) -> None:
        with torch.no_grad():
            for p, v in zip(self.factors, op.factors):
                p.copy_(torch.from_numpy(np.array(v)))

    def _check_input(self, x: Any, where: str, values: list) -> None:
        """``x`` against the layer's parameters (``values``: :meth:`_values`)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: input must be a torch.Tensor, got {type(x).__name__}")
        p = values[0]
        if x.dtype != p.dtype:
            raise TypeError(f"{where}: input dtype {x.dtype} does not match the layer's "
                            f"{p.dtype} (convert one of them: layer.to(dtype) or x.to(dtype))")
        if x.device != p.device:
            raise ValueError(f"{where}: input is on {x.device} but the layer's parameters "
                             f"are on {p.device} (move one of them)")


class DeButLinear(_DeButBase):
    r"""A linear layer ``y = x D^T + b`` whose ``out x in`` matrix ``D`` is a DeBut chain.

    Forward semantics of :class:`torch.nn.Linear`: any number of leading batch dimensions.

    Parameters
    ----------
    in_features, out_features : int
    chain : "auto", str or debutla.Chain
        The factor shapes; ``"auto"`` designs one with :func:`debutla.design_chain`.  The
        chain's size ``(P, Q)`` must be at least ``(out_features, in_features)`` (inputs are
        zero-padded to ``Q`` and outputs cut to ``out_features``).
    bias : bool
    device, dtype : optional
        As for ``nn.Linear``.
    impl : {"auto", "numba", "torch", "cuda"}
        Product implementation (see :mod:`debutla.torch._ops`); ``"auto"`` uses the fused
        Numba kernel for float32/float64 CPU tensors, the chain-specialised CUDA kernel
        for CUDA tensors when CuPy is installed, and torch operations otherwise.

    Attributes
    ----------
    factors : nn.ParameterList
        One parameter per factor in the canonical ``(nb, r, s, t)`` layout, application
        order (``factors[0]`` touches the input).
    bias : nn.Parameter or None
    chain : debutla.Chain

    Notes
    -----
    The state dict holds ``factors.<i>``, ``bias`` and an extra state with the chain, so a
    saved layer is reloaded into ``DeButLinear(in, out, chain=saved_chain)``.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import DeButLinear
    >>> layer = DeButLinear(400, 128, chain="128 <-(2,2,64)- 128 <-(2,2,32)- 128 "
    ...                     "<-(1,2,32)- 256 <-(2,2,16)- 256 <-(16,25,1)- 400")
    >>> layer(torch.randn(2, 3, 400)).shape
    torch.Size([2, 3, 128])
    >>> sum(p.numel() for p in layer.parameters())
    7808
    """

    def __init__(self, in_features: int, out_features: int, chain: Any = "auto",
                 bias: bool = True, device: Any = None, dtype: Any = None,
                 impl: str = "auto") -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"DeButLinear: {name} must be a positive int, got {v!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._m, self._n = self.out_features, self.in_features
        self.impl = _check_impl(impl, "DeButLinear")
        chain = _resolve_chain(chain, self._m, self._n, "DeButLinear")
        self._init_factors(chain, bias, self._n, device, dtype)

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr(layer)``.

        Returns
        -------
        str
        """
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, chain='{self.chain}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer: ``y = x D^T + b``.

        Parameters
        ----------
        x : Tensor (..., in_features)
            Same dtype and device as the layer's parameters.

        Returns
        -------
        Tensor (..., out_features)

        Raises
        ------
        TypeError
            If ``x`` is not a tensor or its dtype differs from the layer's.
        ValueError
            If the last dimension is not ``in_features`` or ``x`` is on another device.
        """
        values = self._values()
        self._check_input(x, "DeButLinear", values)
        rows = self.rows(x)
        y = debut_mm(rows, values, self.chain, (self._m, self._n), self.impl, bias=self.bias)
        # a 2-D input as it is: no view (nor its autograd node, forward and backward)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows the layer's matrix multiplies: ``x`` as ``(samples, in_features)``.

        ``forward(x)`` is ``rows(x) @ D.T + b`` (reshaped); :meth:`from_dense` turns
        calibration inputs into ``factorize``'s ``X`` with it.

        Parameters
        ----------
        x : Tensor (..., in_features)

        Returns
        -------
        Tensor (prod(leading dimensions), in_features)

        Raises
        ------
        ValueError
            If the last dimension of ``x`` is not ``in_features``.

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButLinear
        >>> DeButLinear(16, 8).rows(torch.zeros(2, 3, 16)).shape
        torch.Size([6, 16])
        """
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"DeButLinear: the input's last dimension must be "
                             f"in_features={self.in_features}, got input shape "
                             f"{tuple(x.shape)}")
        return x if x.dim() == 2 else x.reshape(-1, self.in_features)

    # -- conversions -----------------------------------------------------------------------
    @classmethod
    def like(cls, linear: nn.Linear, chain: Any = "auto", impl: str = "auto") -> "DeButLinear":
        """A layer of ``linear``'s shape, bias, dtype and device (random values).

        Parameters
        ----------
        linear : nn.Linear
        chain : "auto", str or debutla.Chain
        impl : {"auto", "numba", "torch", "cuda"}

        Returns
        -------
        DeButLinear

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButLinear
        >>> DeButLinear.like(torch.nn.Linear(16, 8, bias=False)).bias is None
        True
        """
        w = linear.weight
        return cls(linear.in_features, linear.out_features, chain=chain,
                   bias=linear.bias is not None, device=w.device, dtype=w.dtype, impl=impl)

    @classmethod
    def from_dense(cls, linear: nn.Linear, chain: Any = "auto", method: str = "auto",
                   impl: str = "auto", *, calibration: torch.Tensor | None = None,
                   calibration_rows: int | None = CALIBRATION_ROWS,
                   calibration_damping: float = CALIBRATION_DAMPING,
                   **fit: Any) -> "DeButLinear":
        """Fit a trained ``nn.Linear`` with a DeBut chain.

        Parameters
        ----------
        linear : nn.Linear
        chain : "auto", str or debutla.Chain
            With ``"auto"`` and a budget (``max_params`` or ``rel_error`` in ``**fit``)
            :func:`debutla.factorize` searches the chain; without one the layer's
            designed chain is fitted.
        method : {"auto", "hierarchical", "als", "random"}
            Passed to :func:`debutla.factorize` (in float64); ``"random"`` skips the fit
            and keeps random values (the bias is copied in every case; a ``max_params``
            budget then picks the chain with :func:`debutla.design_chain`).
        impl : {"auto", "numba", "torch", "cuda"}
        calibration : Tensor (..., in_features), optional
            Inputs of the layer (e.g. a batch of the data it sees in the trained model):
            the fit then minimises the error of the layer's outputs on them,
            ``||X W^T - X D^T||_F``, instead of the weight error (``factorize``'s ``X``,
            made by :meth:`rows`).
        calibration_rows : int or None
            At most this many rows of ``calibration`` are used, drawn at random without
            replacement (seeded): the fit's cost grows with ``rows x in_features^2``.
            None uses every row.
        calibration_damping : float
            The fit minimises ``||X (W - D)^T||^2 + lam ||W - D||^2`` with ``lam`` this
            fraction of the mean squared column norm of ``X`` (GPTQ's damping): weight
            directions the calibration data never excites (fewer rows than
            ``in_features``, inputs that are always zero) stay close to ``W`` instead of
            drifting.  0 fits the data alone.  The reported data errors include the
            damping term.  With calibration, ``max_sweeps`` defaults to 20 (ALS sweeps
            in the data's metric are costly; see ``CALIBRATED_MAX_SWEEPS``).
        **fit
            More arguments of :func:`debutla.factorize` (``max_params``, ``rel_error``,
            ``max_sweeps``, ``seed``, ...).

        Returns
        -------
        DeButLinear
            Same dtype and device as ``linear``; ``.fit_info`` holds the
            :class:`debutla.FitInfo` (None for ``"random"``) and ``.fit_error`` the relative
            Frobenius error ``||W - D||_F / ||W||_F``.

        Raises
        ------
        TypeError
            If ``linear`` is not an ``nn.Linear``, or ``calibration`` is not a tensor.
        ValueError
            If the chain does not fit the layer, a budget is impossible, or
            ``calibration`` has the wrong shape (and as :func:`debutla.factorize`).

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButLinear
        >>> dense = torch.nn.Linear(16, 8)
        >>> layer = DeButLinear.from_dense(dense, chain="8 <-(2,2,4)- 8 <-(4,8,1)- 16")
        >>> layer.fit_error < 1.0
        True
        >>> small = DeButLinear.from_dense(torch.nn.Linear(64, 64), max_params=1024)
        >>> small.nnz <= 1024
        True
        """
        where = "DeButLinear.from_dense"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{where}: expected an nn.Linear, got {type(linear).__name__}")
        def build(c: Any) -> "DeButLinear":
            return cls.like(linear, c, impl=impl)

        layer = build(chain)
        layer = _fit_into(layer, layer._weight_matrix(linear.weight), chain, method, fit,
                          where, build, calibration, calibration_rows, calibration_damping)
        _copy_bias(layer, linear.bias, where)
        return layer

    @classmethod
    def from_debut(cls, op: DeBut, bias: torch.Tensor | None = None, device: Any = None,
                   dtype: Any = None, impl: str = "auto") -> "DeButLinear":
        """A layer computing ``x op^T (+ bias)`` from a :class:`debutla.DeBut` operator.

        ``dtype`` defaults to torch's default dtype; the operator must be real.  The
        values are loaded as they are: to train from a data-aware fit
        (``factorize(..., X=...)``), pass ``debutla.fit.balance(op)`` (``from_dense``
        does this itself).
        """
        if not isinstance(op, DeBut):
            raise TypeError(f"DeButLinear.from_debut: expected a debutla.DeBut, got "
                            f"{type(op).__name__}")
        if op.dtype.kind == "c":
            raise TypeError("DeButLinear.from_debut: complex operators are not supported")
        m, n = op.shape
        layer = cls(n, m, chain=op.chain, bias=bias is not None, device=device, dtype=dtype,
                    impl=impl)
        layer._load_debut(op)
        _copy_bias(layer, bias, "DeButLinear.from_debut")
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (same dtype and device)."""
        p = self.factors[0]
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=p.device, dtype=p.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"DeButConv2d: {name} must be an int or a pair, got {v!r}")
        a, b = v
    else:
        a = b = v
    for u in (a, b):
        if isinstance(u, bool) or not isinstance(u, (int, np.integer)):
            raise TypeError(f"DeButConv2d: {name} must be ints, got {v!r}")
    return int(a), int(b)


class DeButConv2d(_DeButBase):
    r"""A 2-D convolution whose filter bank is a DeBut chain.

    Forward semantics of :class:`torch.nn.Conv2d` (batched ``(N, C, H, W)`` or unbatched
    ``(C, H, W)`` input; integer, pair, ``"same"`` or ``"valid"`` padding; every
    ``padding_mode``; stride and dilation), computed as ``unfold`` (im2col) followed by
    the DeBut product: each output pixel is ``D`` times the ``c_in kh kw`` input patch.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation
        As for ``nn.Conv2d``.
    groups : int
        Only 1 is supported (a ValueError otherwise).
    bias : bool
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
    chain : "auto", str or debutla.Chain
        Serves the ``out_channels x (in_channels kh kw)`` matrix of the flattened filter.
    flatten : {"cin_kh_kw", "kh_kw_cin"}
        Which flattening of the filter ``(c_out, c_in, kh, kw)`` the chain sees (its input
        index order, slowest first).  ``"cin_kh_kw"`` (default) is
        ``weight.reshape(c_out, -1)`` and the order ``F.unfold`` produces (no permutation
        at run time).  ``"kh_kw_cin"`` is ``weight.permute(0, 2, 3, 1).reshape(c_out, -1)``,
        the DeBut authors' order (the patches are permuted at run time).
        :meth:`from_dense` and :meth:`to_dense` use the same order.
    device, dtype, impl
        As for :class:`DeButLinear`.

    Examples
    --------
    >>> import torch
    >>> from debutla.torch import DeButConv2d
    >>> conv = DeButConv2d(8, 16, 3, chain="16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 "
    ...                    "<-(4,3,1)- 72")
    >>> conv(torch.randn(2, 8, 13, 13)).shape
    torch.Size([2, 16, 11, 11])
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    # ``"same"``, ``"valid"`` or ``(ph, pw)``.
    padding: str | tuple[int, int]
    # ``(left_w, right_w, top_h, bottom_h)``, the order ``F.pad`` takes.
    _pad: tuple[int, int, int, int]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any,
                 stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", chain: Any = "auto",
                 device: Any = None, dtype: Any = None, impl: str = "auto",
                 flatten: str = "cin_kh_kw") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"DeButConv2d: {name} must be a positive int, got {v!r}")
        if groups != 1:
            raise ValueError(f"DeButConv2d: groups={groups} is not supported (only groups=1: "
                             f"one chain serves the whole filter bank)")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"DeButConv2d: padding_mode must be 'zeros', 'reflect', "
                             f"'replicate' or 'circular', got {padding_mode!r}")
        if flatten not in FLATTENS:
            raise ValueError(f"DeButConv2d: flatten must be one of {FLATTENS}, got "
                             f"{flatten!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        for name, pair in (("kernel_size", self.kernel_size), ("stride", self.stride),
                           ("dilation", self.dilation)):
            if min(pair) < 1:
                raise ValueError(f"DeButConv2d: {name} must be positive, got {pair}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"DeButConv2d: padding must be 'same', 'valid', an int or "
                                 f"a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("DeButConv2d: padding='same' needs stride=1 (as nn.Conv2d)")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"DeButConv2d: padding must be >= 0, got {self.padding}")
        self.groups = 1
        self.padding_mode = padding_mode
        self.flatten = flatten
        self.impl = _check_impl(impl, "DeButConv2d")
        kh, kw = self.kernel_size
        self._m, self._n = self.out_channels, self.in_channels * kh * kw
        # (left_w, right_w, top_h, bottom_h), the order F.pad takes
        if isinstance(self.padding, tuple):
            ph, pw = self.padding
            self._pad = (pw, pw, ph, ph)
        elif self.padding == "valid":
            self._pad = (0, 0, 0, 0)
        else:  # "same"
            dh, dw = self.dilation
            total_h, total_w = dh * (kh - 1), dw * (kw - 1)
            self._pad = (total_w // 2, total_w - total_w // 2,
                         total_h // 2, total_h - total_h // 2)
        P, Q = (chain.chain.shape if isinstance(chain, DeBut) else
                parse_chain(chain).shape if isinstance(chain, str) and chain != "auto" else
                chain.shape if isinstance(chain, Chain) else (None, None))
        if Q is not None and Q < self._n:
            raise ValueError(
                f"DeButConv2d: the chain takes {Q} inputs per output but a "
                f"{kh}x{kw} kernel on {self.in_channels} channels has in_channels*kh*kw = "
                f"{self._n} (the chain must serve out_channels x in_channels*kh*kw = "
                f"{self._m}x{self._n}; is it a chain for another kernel size?)")
        chain = _resolve_chain(chain, self._m, self._n, "DeButConv2d")
        self._init_factors(chain, bias, self._n, device, dtype)

    def _extra_config(self) -> dict:
        return {"flatten": self.flatten, "kernel_size": self.kernel_size}

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr(layer)`` (defaults left out).

        Returns
        -------
        str
        """
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", flatten={self.flatten!r}, chain='{self.chain}'"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution.

        Parameters
        ----------
        x : Tensor (N, in_channels, H, W) or (in_channels, H, W)
            Same dtype and device as the layer's parameters.

        Returns
        -------
        Tensor (N, out_channels, Ho, Wo) or (out_channels, Ho, Wo)
            ``Ho``, ``Wo`` as for ``nn.Conv2d``.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor or its dtype differs from the layer's.
        ValueError
            If ``x`` has the wrong shape, is on another device, or is smaller than the
            dilated kernel after padding.
        """
        values = self._values()
        self._check_input(x, "DeButConv2d", values)
        unbatched = x.dim() == 3
        rows, (N, Ho, Wo) = self._patches(x)
        y = debut_mm(rows, values, self.chain, (self._m, self._n), self.impl, bias=self.bias)
        y = y.reshape(N, Ho * Wo, self._m).transpose(1, 2).reshape(N, self._m, Ho, Wo)
        return y[0] if unbatched else y

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows the layer's matrix multiplies: the input's patches, flattened.

        One row per batch item and output position (batch-major), in the order of the
        filter's flattening (``flatten``), so ``rows(x) @ D.T + b`` holds the outputs
        (channels last); :meth:`from_dense` turns calibration inputs into
        ``factorize``'s ``X`` with it.

        Parameters
        ----------
        x : Tensor (N, in_channels, H, W) or (in_channels, H, W)

        Returns
        -------
        Tensor (N Ho Wo, in_channels kh kw)

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or is smaller than the dilated kernel after
            padding.

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButConv2d
        >>> DeButConv2d(3, 8, 3, padding=1).rows(torch.zeros(2, 3, 5, 5)).shape
        torch.Size([50, 27])
        """
        return self._patches(x)[0]

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``rows(x)`` and the output geometry ``(N, Ho, Wo)``."""
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"DeButConv2d: input must be (N, C, H, W) or (C, H, W) with "
                             f"C = in_channels = {self.in_channels}, got shape "
                             f"{tuple(x.shape)}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        pad = self._pad
        if any(pad):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pad, mode=mode)
        N, C, H, W = x.shape
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        sh, sw = self.stride
        Ho = (H - dh * (kh - 1) - 1) // sh + 1
        Wo = (W - dw * (kw - 1) - 1) // sw + 1
        if Ho < 1 or Wo < 1:
            raise ValueError(f"DeButConv2d: input of spatial size {(H, W)} (after padding) "
                             f"is smaller than the dilated kernel "
                             f"{(dh * (kh - 1) + 1, dw * (kw - 1) + 1)}")
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)  # N, K, L
        L = cols.shape[-1]
        if self.flatten == "cin_kh_kw":
            rows = cols.transpose(1, 2).reshape(N * L, self._n)
        else:
            rows = cols.reshape(N, C, kh * kw, L).permute(0, 3, 2, 1).reshape(N * L, self._n)
        return rows, (N, Ho, Wo)

    # -- conversions -----------------------------------------------------------------------
    def _flat(self, w: torch.Tensor) -> torch.Tensor:
        if self.flatten == "cin_kh_kw":
            return w.reshape(self._m, -1)
        return w.permute(0, 2, 3, 1).reshape(self._m, -1)

    def _unflat(self, Wm: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        if self.flatten == "cin_kh_kw":
            return Wm.reshape(self._m, self.in_channels, kh, kw)
        return Wm.reshape(self._m, kh, kw, self.in_channels).permute(0, 3, 1, 2)

    def _conv_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    padding_mode=self.padding_mode)

    @classmethod
    def like(cls, conv: nn.Conv2d, chain: Any = "auto", impl: str = "auto",
             flatten: str = "cin_kh_kw") -> "DeButConv2d":
        """A layer of ``conv``'s geometry, bias, dtype and device (random values).

        Parameters
        ----------
        conv : nn.Conv2d
            ``groups=1``.
        chain : "auto", str or debutla.Chain
        impl : {"auto", "numba", "torch", "cuda"}
        flatten : {"cin_kh_kw", "kh_kw_cin"}

        Returns
        -------
        DeButConv2d

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButConv2d
        >>> DeButConv2d.like(torch.nn.Conv2d(3, 8, 3, stride=2)).stride
        (2, 2)
        """
        w = conv.weight
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                   padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                   bias=conv.bias is not None, padding_mode=conv.padding_mode, chain=chain,
                   device=w.device, dtype=w.dtype, impl=impl, flatten=flatten)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, chain: Any = "auto", method: str = "auto",
                   impl: str = "auto", flatten: str = "cin_kh_kw", *,
                   calibration: torch.Tensor | None = None,
                   calibration_rows: int | None = CALIBRATION_ROWS,
                   calibration_damping: float = CALIBRATION_DAMPING,
                   **fit: Any) -> "DeButConv2d":
        """Fit a trained ``nn.Conv2d`` (``groups=1``) with a DeBut chain.

        The filter is flattened as ``flatten`` says (see :class:`DeButConv2d`) and fitted
        by :func:`debutla.factorize`; ``chain``, ``method``, ``calibration`` (inputs
        ``(N, in_channels, H, W)``: their patches, :meth:`rows`, are the rows fitted),
        ``calibration_rows``, ``calibration_damping`` and ``**fit`` as in
        :meth:`DeButLinear.from_dense`.

        Examples
        --------
        >>> import torch
        >>> from debutla.torch import DeButConv2d
        >>> conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> layer = DeButConv2d.from_dense(conv, chain="16 <-(2,6,8)- 48 <-(1,2,8)- 96 "
        ...                                "<-(2,2,4)- 96 <-(4,3,1)- 72")
        >>> layer(torch.randn(1, 8, 5, 5)).shape
        torch.Size([1, 16, 5, 5])
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"DeButConv2d.from_dense: expected an nn.Conv2d, got "
                            f"{type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"DeButConv2d.from_dense: groups={conv.groups} is not supported")

        def build(c: Any) -> "DeButConv2d":
            return cls.like(conv, c, impl=impl, flatten=flatten)

        layer = build(chain)
        layer = _fit_into(layer, layer._weight_matrix(conv.weight), chain, method, fit,
                          "DeButConv2d.from_dense", build, calibration, calibration_rows,
                          calibration_damping)
        _copy_bias(layer, conv.bias, "DeButConv2d.from_dense")
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (same dtype and device)."""
        p = self.factors[0]
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                         bias=self.bias is not None, device=p.device, dtype=p.dtype,
                         **self._conv_kwargs())
        with torch.no_grad():
            conv.weight.copy_(self._unflat(self.dense_weight()))
            if self.bias is not None:
                if conv.bias is None:
                    raise RuntimeError("internal: DeButConv2d.to_dense built a conv without bias")
                conv.bias.copy_(self.bias)
        return conv


_FIT_METHODS = ("auto", "hierarchical", "als", "random")


def _copy_bias(layer: _DeButBase, bias: torch.Tensor | None, where: str) -> None:
    """Copy a dense layer's ``bias`` (if any) into ``layer``, built with a bias to match."""
    if bias is None:
        return
    if layer.bias is None:
        raise RuntimeError(f"internal: {where} built a layer without bias")
    with torch.no_grad():
        layer.bias.copy_(bias)


def _calibration_X(layer: _DeButBase, calibration: Any, rows: int | None, damping: Any,
                   seed: Any, where: str) -> np.ndarray:
    """``factorize``'s ``X`` from a layer's calibration inputs (float64, at most ``rows``)."""
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(f"{where}: calibration must be a torch.Tensor of the layer's inputs, "
                        f"got {type(calibration).__name__}")
    if rows is not None:
        rows = check_int(rows, "calibration_rows", where=where)
    damping = check_real(damping, "calibration_damping", where=where, min=0)
    x = calibration.detach()
    if x.is_floating_point() or x.is_complex():
        x = x.to(layer.factors[0].dtype)
    try:
        X = layer.rows(x.cpu())  # type: ignore[operator]  # (mypy reads nn.Module attrs)
    except ValueError as e:
        raise ValueError(f"{where}: calibration: {e}") from None
    if X.shape[0] == 0:
        raise ValueError(f"{where}: calibration holds no inputs (shape "
                         f"{tuple(calibration.shape)})")
    if rows is not None and X.shape[0] > rows:
        rng = np.random.default_rng(seed if isinstance(seed, (int, np.integer)) else 0)
        pick = np.sort(rng.choice(X.shape[0], size=int(rows), replace=False))
        X = X[torch.from_numpy(pick)]
    Xn = X.double().numpy()
    if not np.all(np.isfinite(Xn)):
        raise ValueError(f"{where}: calibration holds NaN or Inf values")
    if Xn.shape[0] < Xn.shape[1]:
        name = getattr(_WARN_AS, "prefix", None) or where
        warnings.warn(f"{name}: calibration gives {Xn.shape[0]} rows for {Xn.shape[1]} "
                      f"inputs, so some input directions are never excited and only the "
                      f"damping (calibration_damping) holds the weight there; give more "
                      f"inputs", UserWarning, stacklevel=4)
    if damping > 0:
        # rows sqrt(lam) I: the objective ||X (W - D)^T||^2 + lam ||W - D||^2 keeps the
        # directions the data does not excite close to W (lam: damping x the mean
        # squared column norm of X, as GPTQ damps its Hessian)
        n = Xn.shape[1]
        lam = float(damping) * float(np.vdot(Xn, Xn).real) / n
        if lam > 0:
            Xn = np.vstack([Xn, np.sqrt(lam) * np.eye(n)])
    return Xn


def _is_auto(chain: Any) -> bool:
    return isinstance(chain, str) and chain == "auto"


def _fit_into(layer: _DeButBase, W: np.ndarray, chain: Any, method: str, fit: dict,
              where: str, build: Any, calibration: Any = None,
              calibration_rows: int | None = None,
              calibration_damping: float = CALIBRATION_DAMPING) -> Any:
    """Fit ``W`` (float64, the layer's ``m x n``) into ``layer``, set ``fit_info``.

    Returns the fitted layer: ``layer`` itself, or a layer made by ``build(chain)`` when
    ``chain="auto"`` with a budget chose another chain than the designed one.
    """
    from .. import factorize
    from ..fit.balance import balance

    if method not in _FIT_METHODS:
        raise ValueError(f"{where}: method must be one of {_FIT_METHODS}, got {method!r}")
    if calibration is not None:
        if "X" in fit:
            raise TypeError(f"{where}: give calibration (the layer's inputs) or X (the "
                            f"rows factorize fits), not both")
        if method == "random":
            raise TypeError(f"{where}: method='random' fits nothing, so it takes no "
                            f"calibration inputs")
        fit = {**fit, "X": _calibration_X(layer, calibration, calibration_rows,
                                          calibration_damping, fit.get("seed"), where)}
        if method != "hierarchical" and fit.get("max_sweeps") is None:
            # sweeps in the data's metric cost far more than plain ones (systems of size
            # n): fewer by default, see CALIBRATED_MAX_SWEEPS
            fit["max_sweeps"] = CALIBRATED_MAX_SWEEPS
    norm = float(np.linalg.norm(W))
    if method == "random":
        fit = dict(fit)
        budget = fit.pop("max_params", None) if _is_auto(chain) else None
        if fit:
            raise TypeError(f"{where}: method='random' takes no fit arguments except a "
                            f"max_params budget with chain='auto', got {sorted(fit)}")
        if budget is not None:
            m, n = W.shape
            try:
                designed = design_chain(m, n, max_params=budget)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if designed != layer.chain:
                layer = build(designed)
        layer.fit_info = None
        D = layer.to_debut().astype(np.float64).to_dense()
        layer.fit_error = float(np.linalg.norm(W - D) / norm) if norm > 0 else 0.0
        return layer
    try:
        op, info = factorize(W, "auto" if _is_auto(chain) else layer.chain, method=method,
                             return_info=True, **fit)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if op.chain != layer.chain:  # a budget search chose another chain
        layer = build(op.chain)
    # evenly scaled factors (the same product): data-aware fits can leave factor values
    # orders of magnitude apart, on which SGD diverges (see debutla.fit.balance)
    layer._load_debut(balance(op))
    layer.fit_info = info
    layer.fit_error = float(info.rel_error)
    return layer
