r"""The ``debutla compress`` command: a saved PyTorch model in, the same model with DeBut
layers out (see :func:`debutla.torch.compress`).

::

    debutla compress model.pt --list
    debutla compress model.pt --unsafe-pickle --tradeoff -l fc1 --ratios 0.05,0.1,0.2
    debutla compress model.pt -o small.pt --unsafe-pickle \\
        --layer fc1=ratio:0.1 --layer fc2=error:0.3 --layer conv2 --max-params 2000 \\
        --calibration batch.pt

``model.pt`` is a whole model saved with ``torch.save(model)``.  Such a file is a pickle:
loading it runs code named in the file, and it needs the model's classes importable (the
current folder is searched).  The command therefore loads it only with
``--unsafe-pickle``; a file of tensors only (a state dict) is refused with what to do
instead.  The output is saved the same way (``torch.load(path, weights_only=False)``
reads it back, with debutla installed), or as a state dict with ``--state-dict``
(:func:`debutla.torch.load_compressed` puts it into a freshly built model).

Torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any, Iterator

import numpy as np

from . import CLIError, _chain_arg, _db, _positive_int, _unit_real

__all__ = ["add_parser", "parse_layer", "run"]

_BUDGETS = {"ratio": ("ratio", float), "params": ("max_params", int),
            "error": ("rel_error", float)}


def add_parser(sub: Any) -> None:
    """Declare ``debutla compress`` on the sub-command parsers ``sub``."""
    p = sub.add_parser(
        "compress", help="replace layers of a saved PyTorch model by DeBut layers",
        description="Load a whole PyTorch model (saved with torch.save(model)), replace "
                    "the named nn.Linear / nn.Conv2d layers by DeBut layers fitted to "
                    "their weights (or to their outputs on calibration inputs), print a "
                    "report (parameters, layer compression, weight and output errors "
                    "beside a truncated SVD of the same size) and save the model.",
        epilog="Layer specs: NAME (chain 'auto' with the global budget), NAME=auto, "
               "NAME=ratio:R (at most R m n values), NAME=params:N, NAME=error:E "
               "(smallest chain reaching relative error E: the output error with "
               "--calibration, else the weight's), or NAME=CHAIN (the paper's "
               "notation or a PAPER_CHAINS name).  Needs PyTorch.")
    p.add_argument("model", metavar="MODEL.pt",
                   help="a model saved with torch.save(model) (a pickle: see "
                        "--unsafe-pickle)")
    p.add_argument("-o", "--output", metavar="OUT.pt",
                   help="where to save the compressed model (torch.save)")
    p.add_argument("--layer", "-l", action="append", default=[], metavar="NAME[=SPEC]",
                   help="a layer to replace, with its size (repeatable)")
    p.add_argument("--list", action="store_true",
                   help="list the model's Linear and Conv2d layers and stop")
    p.add_argument("--tradeoff", action="store_true",
                   help="for each --layer: DeBut error against parameters beside the "
                        "truncated SVD's (output errors too with --calibration), and stop")
    p.add_argument("--ratios", type=_ratio_list, metavar="R1,R2,...",
                   help="budgets of --tradeoff as fractions of each weight (default: "
                        "five from 1/64 to 1/4)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=_unit_real, metavar="R",
                        help="every layer given without a size: at most R m n values")
    budget.add_argument("--max-params", type=_positive_int, metavar="N",
                        help="every layer given without a size: at most N values")
    budget.add_argument("--rel-error", type=_unit_real, metavar="E",
                        help="every layer given without a size: the smallest chain "
                             "reaching relative error E (of the outputs with "
                             "--calibration)")
    p.add_argument("--method", choices=("auto", "hierarchical", "als", "random"),
                   default="auto", help="how the factors are initialised (default auto)")
    p.add_argument("--calibration", metavar="X.pt|X.npy",
                   help="model inputs (a tensor): fit each layer's outputs on the inputs "
                        "it sees when the model runs on them")
    p.add_argument("--calibration-rows", type=_positive_int, metavar="N",
                   help="at most N calibration rows per layer (default 16384)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (by default each fit shows one on stderr)")
    p.add_argument("--state-dict", action="store_true",
                   help="save the compressed model's state dict (no pickle: load it with "
                        "debutla.torch.load_compressed(model, torch.load(OUT.pt)))")
    p.add_argument("--report", metavar="REPORT.json",
                   help="also write the report as JSON")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="load MODEL.pt although loading a pickle runs code from it "
                        "(only for files you trust)")
    p.set_defaults(func=run)


def _ratio_list(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        vals = []
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected numbers in (0, 1] separated by commas, "
                                         f"got {text!r}")
    return vals


def parse_layer(text: str) -> tuple[str, Any]:
    """``NAME[=SPEC]`` to ``(name, spec)`` as :func:`debutla.torch.compress` takes it.

    Parameters
    ----------
    text : str

    Returns
    -------
    (str, spec)
        ``spec`` is ``"auto"``, a :class:`debutla.Chain`, or a dict with one budget.

    Raises
    ------
    CLIError
        For an empty name, an unknown budget or a malformed value or chain.

    Examples
    --------
    >>> parse_layer("fc1=ratio:0.1")
    ('fc1', {'ratio': 0.1})
    >>> parse_layer("conv2")
    ('conv2', 'auto')
    """
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not name:
        raise CLIError(f"--layer {text!r}: the layer name is empty (NAME[=SPEC])")
    if not sep or spec.lower() == "auto":
        return name, "auto"
    kind, colon, value = spec.partition(":")
    if colon and kind.strip().lower() in _BUDGETS:
        key, cast = _BUDGETS[kind.strip().lower()]
        try:
            v = cast(value.replace("_", "")) if cast is int else cast(value)
        except ValueError:
            what = "an integer" if cast is int else "a number"
            raise CLIError(f"--layer {text!r}: {kind} needs {what}, got {value!r}") from None
        return name, {key: v}
    try:
        return name, _chain_arg(spec)
    except CLIError as e:
        raise CLIError(f"--layer {text!r}: {e} (a SPEC is auto, ratio:R, params:N, "
                       f"error:E or a chain)") from None


def _torch():
    try:
        import torch

        import debutla.torch as dbt
    except ImportError:
        raise CLIError("debutla compress needs PyTorch: pip install 'debutla[torch]'") from None
    return torch, dbt


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """The library's warnings inside the block, one line each on stderr afterwards.

    ``warnings.catch_warnings`` swaps process-wide state, and so does Numba's compiler:
    Numba is loaded first (not in the background) and kernels compile in this thread
    inside the block, so no background thread swaps the capture away under it.
    """
    db = _db()
    db.warmup()
    with db.config(background=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"debutla compress: warning: {w.message}", file=sys.stderr)


def _load_model(path: str, unsafe: bool) -> Any:
    torch, _ = _torch()
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not unsafe:
            raise CLIError(f"{path} holds pickled Python objects (a model saved with "
                           f"torch.save(model)); loading it runs code named in the file, "
                           f"so pass --unsafe-pickle if you trust it") from None
        if os.getcwd() not in sys.path:  # the model's classes, from the current folder
            sys.path.insert(0, os.getcwd())
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except (ImportError, AttributeError) as e:
            raise CLIError(f"{path}: the model's code cannot be imported ({e}); run the "
                           f"command from the folder that holds it or add that folder "
                           f"to PYTHONPATH") from None
        except Exception as e:
            raise CLIError(f"{path}: not a file torch.load can read ({type(e).__name__}: "
                           f"{e})") from None
    except Exception as e:
        raise CLIError(f"{path}: not a file torch.load can read ({type(e).__name__}: "
                       f"{e})") from None
    if not isinstance(obj, torch.nn.Module):
        what = ("tensors only (a state dict)" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CLIError(f"{path} holds {what}, not a model: save the model itself with "
                       f"torch.save(model), or in Python load the state dict into the "
                       f"model and call debutla.torch.compress(model, ...)")
    return obj


def _load_calibration(path: str, dtype: Any) -> Any:
    torch, _ = _torch()
    if not os.path.isfile(path):
        raise CLIError(f"--calibration {path}: no such file")
    try:
        if path.endswith(".npy"):
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"--calibration {path}: cannot read it ({type(e).__name__}: "
                       f"{e}); give a tensor saved with torch.save or a .npy array") from None
    if not isinstance(x, torch.Tensor):
        raise CLIError(f"--calibration {path}: holds an object of type {type(x).__name__}, "
                       f"not a tensor")
    return x.to(dtype) if x.is_floating_point() else x


def _list_layers(model: Any) -> str:
    torch, dbt = _torch()
    db = _db()
    rows = [f"{'layer':<24} {'kind':<7} {'matrix':>11} {'params':>10}  auto chain (values)"]
    total = dbt.count_parameters(model)
    for name, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        m = mod.weight.shape[0]
        n = int(np.prod(mod.weight.shape[1:]))
        params = sum(p.numel() for p in mod.parameters())
        if isinstance(mod, torch.nn.Conv2d) and mod.groups != 1:
            auto = f"(groups={mod.groups}: not supported)"
        else:
            c = db.design_chain(m, n)
            auto = f"{c.nnz:,}: {c}"
        rows.append(f"{name:<24} {type(mod).__name__:<7} {m:>5}x{n:<5} {params:>10,}  "
                    f"{auto}")
    rows.append(f"model: {total:,} trainable parameters")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """Run ``debutla compress`` (``args`` from :func:`add_parser`'s parser)."""
    torch, dbt = _torch()
    if args.tradeoff and not args.layer:
        raise CLIError("--tradeoff needs the layers to study: --layer NAME (--list shows "
                       "them)")
    if not (args.list or args.tradeoff):
        if not args.output:
            raise CLIError("-o OUT.pt is required (or --list to see the layers)")
        if not args.layer:
            raise CLIError("name at least one layer with --layer NAME[=SPEC] (--list "
                           "shows them)")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise CLIError(f"-o {args.output}: the folder {out_dir} does not exist")
    layers: dict[str, Any] = {}
    for text in args.layer:
        name, spec = parse_layer(text)
        if name in layers:
            raise CLIError(f"--layer {name}: the layer is named twice")
        layers[name] = spec
    model = _load_model(args.model, args.unsafe_pickle)
    if args.list:
        print(_list_layers(model))
        return 0
    calibration = None
    if args.calibration:
        first = next(iter(model.parameters()), None)
        dtype = first.dtype if first is not None else torch.float32
        calibration = _load_calibration(args.calibration, dtype)
    if args.tradeoff:
        from ..torch.tradeoff import format_tradeoff

        if args.method == "random":
            raise CLIError("--tradeoff reports fitted errors; --method random fits nothing "
                           "(use auto, hierarchical or als)")

        extra = ({} if args.calibration_rows is None
                 else {"calibration_rows": args.calibration_rows})
        with _warnings_on_stderr():
            recs = dbt.layer_tradeoff(model, list(layers), args.ratios,
                                      calibration=calibration, methods=(args.method,),
                                      seed=args.seed, **extra)
        print(format_tradeoff(recs))
        return 0
    kwargs: dict[str, Any] = {}
    for k in ("ratio", "max_params", "rel_error"):
        if getattr(args, k) is not None:
            kwargs[k] = getattr(args, k)
    if args.calibration_rows is not None:
        kwargs["calibration_rows"] = args.calibration_rows
    if args.method != "random":
        kwargs["seed"] = args.seed
        kwargs["progress"] = not args.quiet
    if calibration is not None:
        kwargs["calibration"] = calibration
    t0 = time.perf_counter()
    with _warnings_on_stderr():
        small, report = dbt.compress(model, layers, method=args.method, inplace=True,
                                     **kwargs)
    seconds = time.perf_counter() - t0
    try:
        torch.save(small.state_dict() if args.state_dict else small, args.output)
    except OSError as e:
        raise CLIError(f"cannot write {args.output}: {e}") from None
    print(str(report))
    print(f"time   {seconds:.2f} s ({args.method} fits)")
    if args.state_dict:
        print(f"saved  {args.output}  (the state dict: build the model, then "
              f"debutla.torch.load_compressed(model, torch.load(path)))")
    else:
        print(f"saved  {args.output}  (torch.load(path, weights_only=False) reads it back; "
              f"debutla must be installed)")
    worse = [r.name for r in report.layers
             if r.svd_rel_error is not None and r.svd_rel_error < r.fit_error
             and r.data_rel_error is None]
    if worse:
        print(f"note   a truncated SVD of the same size fits {', '.join(worse)} better "
              f"(weight error); the DeBut paper fine-tunes after the fit")
    if args.report:
        data = {"model": args.model, "params_before": report.params_before,
                "params_after": report.params_after, "mc": report.mc,
                "seconds": seconds, "layers": [asdict(r) for r in report.layers]}
        try:
            with open(args.report, "w") as f:
                json.dump(data, f, indent=1)
        except OSError as e:
            raise CLIError(f"cannot write {args.report}: {e}") from None
        print(f"report {args.report}")
    return 0
