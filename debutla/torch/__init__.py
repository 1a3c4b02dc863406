"""PyTorch layers built on DeBut matrices (optional: ``pip install debutla[torch]``).

The core library never imports torch; importing this subpackage does.

Public API: :class:`DeButLinear`, :class:`DeButConv2d`, :func:`compress`,
:class:`CompressionReport`, :func:`layer_tradeoff`, :func:`load_compressed`,
:func:`debut_mm`, :func:`warmup`.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("debutla.torch needs PyTorch: pip install 'debutla[torch]'") from e

from ._ops import IMPLS, backward_mode, clear_cache, debut_mm
from .compress import CompressionReport, LayerReport, compress, count_parameters
from .layers import DeButConv2d, DeButLinear
from .restore import load_compressed
from .tradeoff import layer_tradeoff
from .warmup import warmup

__all__ = ["DeButLinear", "DeButConv2d", "compress", "CompressionReport", "LayerReport",
           "count_parameters", "layer_tradeoff", "load_compressed", "debut_mm", "IMPLS",
           "clear_cache", "backward_mode", "warmup"]
