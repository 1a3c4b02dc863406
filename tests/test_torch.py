"""Tests of debutla.torch: the DeBut layers against independent dense references.

References are built here from the canonical layout formula (tests/strategies.py), never
from the library's kernels: the forward against the float64 product of the dense factors,
the value gradients against autograd through a differentiable scatter of each factor's
values into its dense matrix.  Tolerances are the forward error bounds of
tests/strategies.py (products of absolute values times the unit roundoff).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import debutla as db  # noqa: E402
from debutla import Chain, DeBut  # noqa: E402
from debutla.torch import DeButConv2d, DeButLinear, _ops, compress, debut_mm  # noqa: E402
from strategies import (  # noqa: E402
    assert_product_close,
    error_depth,
    operators,
    reference,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "tests", "data", "lenet_mnist_debut_paper.npz")
TDTYPES = {"float32": torch.float32, "float64": torch.float64}
IMPLS = ("numba", "torch")

PADDED = "8 <-(2,2,2)- 8 <-(2,4,1)- 16"          # serves e.g. 5x13 (padding both sides)
BULGING = "6 <-(1,2,1)- 12 <-(3,1,1)- 4"          # 4 -> 12 -> 6
CONV_BULGING = "3 <-(1,4,3)- 12 <-(3,2,1)- 8"    # 8 -> 12 -> 3, a 2x2 kernel on 2 channels


def _np(t):
    return t.detach().cpu().double().numpy()


def _spy(monkeypatch, owner, name: str, calls: list, tag=1) -> None:
    """Replace ``owner.name`` by a wrapper that appends ``tag`` to ``calls`` and calls it."""
    real = getattr(owner, name)

    def spy(*a, **k):
        calls.append(tag)
        return real(*a, **k)
    monkeypatch.setattr(owner, name, spy)


def _layer_from_op(op: DeBut, dtype, impl, bias=False):
    return DeButLinear.from_debut(op, bias=None if not bias else torch.zeros(op.shape[0]),
                                  dtype=dtype, impl=impl)


def _dense_factor_t(spec, v):
    """The dense p x q factor from its values by the layout formula (differentiable)."""
    nb, r, s, t = spec.value_shape
    b, i, j, k = np.indices((nb, r, s, t))
    rows = torch.as_tensor((b * r * t + i * t + k).ravel())
    cols = torch.as_tensor((b * s * t + j * t + k).ravel())
    F = torch.zeros(spec.p, spec.q, dtype=v.dtype)
    return F.index_put((rows, cols), v.reshape(-1))


def _dense_chain_t(chain, values, shape):
    D = None
    for spec, v in zip(chain, values):
        F = _dense_factor_t(spec, v)
        D = F if D is None else F @ D
    return D[:shape[0], :shape[1]]


# ---------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------

@given(op=operators(np.float64), lead=st.lists(st.integers(0, 3), min_size=0, max_size=2),
       dt=st.sampled_from(sorted(TDTYPES)), impl=st.sampled_from(IMPLS),
       seed=st.integers(0, 2**31 - 1))
def test_linear_forward_equals_operator_and_dense(op, lead, dt, impl, seed):
    dtype = TDTYPES[dt]
    op = op.astype(np.float32) if dt == "float32" else op
    m, n = op.shape
    layer = _layer_from_op(op, dtype, impl)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=g, dtype=torch.float64).to(dtype)
    y = layer(x)
    assert y.shape == (*lead, m) and y.dtype == dtype
    X = _np(x).reshape(-1, n)
    expected = X @ reference(op).T
    bound = np.abs(X) @ reference(op, absolute=True).T
    depth = error_depth(op.chain)
    assert_product_close(y.detach().numpy().reshape(-1, m), expected, bound, np.dtype(dt),
                         depth, "DeButLinear vs reference")
    # the operator itself (same kernels on the numba path)
    assert_product_close(op.matmat_rows(X.astype(dt)), expected, bound, np.dtype(dt), depth,
                         "operator vs reference")
    # the equivalent nn.Linear: BLAS sums n more terms on a rounded W
    dense = layer.to_dense()
    yd = dense(x).detach().numpy().reshape(-1, m)
    assert_product_close(yd, expected, bound, np.dtype(dt), 2 * depth + n,
                         "to_dense() nn.Linear vs reference")


def test_linear_bias_and_leading_dims_match_nn_linear():
    torch.manual_seed(0)
    layer = DeButLinear(400, 128, chain=db.PAPER_CHAINS["lenet_fc1_mono2"])
    x = torch.randn(2, 3, 5, 400)
    torch.testing.assert_close(layer(x), layer.to_dense()(x))
    assert layer(torch.randn(400)).shape == (128,)
    assert layer(torch.randn(0, 400)).shape == (0, 128)


def test_impls_agree_on_paper_chain():
    torch.manual_seed(1)
    layer = DeButLinear(400, 128, chain=db.PAPER_CHAINS["lenet_fc1_bulg1"],
                        dtype=torch.float64)
    x = torch.randn(7, 400, dtype=torch.float64)
    y1 = layer(x)
    layer.impl = "torch"
    torch.testing.assert_close(layer(x), y1, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------

@given(op=operators(np.float64), batch=st.integers(1, 5), impl=st.sampled_from(IMPLS),
       seed=st.integers(0, 2**31 - 1))
def test_linear_gradients_equal_dense_reference_float32(op, batch, impl, seed):
    m, n = op.shape
    op32 = op.astype(np.float32)
    layer = _layer_from_op(op32, torch.float32, impl)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=g)
    w = torch.randn(batch, m, generator=g)
    xr = x.clone().requires_grad_(True)
    (layer(xr) * w).sum().backward()
    # reference in float64, through the dense factors; and the bound with |.| everywhere
    vals = [torch.tensor(np.array(v), dtype=torch.float64, requires_grad=True)
            for v in op32.factors]
    x64 = x.double().requires_grad_(True)
    (x64 @ _dense_chain_t(op.chain, vals, op.shape).T * w.double()).sum().backward()
    avals = [v.detach().abs().requires_grad_(True) for v in vals]
    ax = x.double().abs().requires_grad_(True)
    (ax @ _dense_chain_t(op.chain, avals, op.shape).T * w.double().abs()).sum().backward()
    depth = 2 * error_depth(op.chain) + batch + m + n
    assert_product_close(xr.grad.numpy(), x64.grad.numpy(), ax.grad.numpy(), np.float32,
                         depth, "input gradient")
    for i, (p, v, a) in enumerate(zip(layer.factors, vals, avals)):
        assert_product_close(p.grad.numpy(), v.grad.numpy(), a.grad.numpy(), np.float32,
                             depth, f"value gradient of factor {i}")
    # and the input gradient equals the equivalent nn.Linear's
    dense = layer.to_dense()
    xd = x.clone().requires_grad_(True)
    (dense(xd) * w).sum().backward()
    assert_product_close(xd.grad.numpy(), x64.grad.numpy(), ax.grad.numpy(), np.float32,
                         depth, "nn.Linear input gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chain,shape", [(PADDED, (5, 13)), (BULGING, (5, 3)),
                                         (BULGING, (6, 4)), (db.PAPER_CHAINS["lenet_fc2"],
                                                             (64, 128))])
def test_linear_gradcheck_float64(impl, chain, shape):
    torch.manual_seed(0)
    m, n = shape
    layer = DeButLinear(n, m, chain=chain, dtype=torch.float64, impl=impl)
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    params = [layer.bias, *layer.factors]

    def f(x, b, *vals):
        return debut_mm(x, vals, layer.chain, shape, impl, bias=b)

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chain,shape", [(PADDED, (5, 13)), (BULGING, (5, 3))])
def test_gradcheck_through_the_registered_op(monkeypatch, impl, chain, shape):
    """Eager calls use the plain autograd function; the custom op (what compiled graphs
    and transforms call) passes gradcheck too, its bias gradient included."""
    if not _ops._HAS_CUSTOM_OP:
        pytest.skip("this torch has no torch.library.custom_op")
    monkeypatch.setattr(_ops, "_plain_eager", lambda x: False)
    torch.manual_seed(1)
    m, n = shape
    layer = DeButLinear(n, m, chain=chain, dtype=torch.float64, impl=impl)
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    calls: list = []
    _spy(monkeypatch, _ops, "_debut_mm_op", calls)

    def f(x, b, *vals):
        return debut_mm(x, vals, layer.chain, shape, impl, bias=b)

    assert torch.autograd.gradcheck(f, (x, layer.bias, *layer.factors))
    assert calls


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_bias_equals_torch_add_and_its_gradient(impl):
    torch.manual_seed(3)
    layer = DeButLinear(13, 5, chain=PADDED, impl=impl)
    x = torch.randn(300, 13)  # more rows than one block of _col_sums
    g = torch.randn(300, 5)
    b = layer.bias.detach().clone().requires_grad_(True)
    vals = [v.detach() for v in layer.factors]
    y = debut_mm(x, vals, layer.chain, (5, 13), impl, bias=b)
    y.backward(g)
    y_ref = debut_mm(x, vals, layer.chain, (5, 13), impl) + layer.bias
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the same adds
    torch.testing.assert_close(b.grad, g.sum(0), rtol=1e-6, atol=1e-5)
    assert debut_mm(x[:0], vals, layer.chain, (5, 13), impl, bias=b).shape == (0, 5)


def test_bias_column_sums_are_accurate_over_many_rows():
    rng = np.random.default_rng(0)
    g = (0.1 + 0.01 * rng.standard_normal((1 << 17, 3))).astype(np.float32)
    exact = g.astype(np.float64).sum(0)
    err = np.abs(_ops._col_sums(g) - exact).max() / np.abs(exact).max()
    naive = np.abs(np.add.reduce(g, axis=0) - exact).max() / np.abs(exact).max()
    assert err < 1e-7 < naive  # a row-by-row float32 sum is not good enough
    for dt in (np.float64, np.complex64, np.complex128):
        a = rng.standard_normal((257, 4)).astype(dt)
        np.testing.assert_allclose(_ops._col_sums(a), a.sum(0), rtol=1e-6)
        assert _ops._col_sums(a).dtype == dt


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.complex64, np.complex128])
def test_bias_column_sums_are_numpys_blocked_sums(dt):
    """The compiled pass gives the bits of the NumPy expression it replaced (in row
    order: two columns or more), with a partial last block or none."""
    rng = np.random.default_rng(1)
    wide = np.complex128 if np.dtype(dt).kind == "c" else np.float64
    B = _ops._COLSUM_BLOCK
    for rows in (1, B - 1, B, B + 1, 300, 2 * B):
        for m in (2, 3, 17, 512):
            g = rng.standard_normal((rows, m)) * 10.0 ** rng.uniform(-3, 3, (rows, m))
            if np.dtype(dt).kind == "c":
                g = g + 1j * rng.standard_normal((rows, m))
            g = g.astype(dt)
            full = rows - rows % B
            acc = np.zeros(m, wide)
            if full:
                acc += g[:full].reshape(-1, B, m).sum(axis=1).sum(axis=0, dtype=wide)
            if full < rows:
                acc += g[full:].sum(axis=0, dtype=wide)
            np.testing.assert_array_equal(_ops._col_sums(g), acc.astype(dt))


def test_bad_bias_is_named():
    vals = [v.detach() for v in DeButLinear(13, 5, chain=PADDED).factors]
    x = torch.randn(2, 13)
    with pytest.raises(TypeError, match="debut_mm: bias.*dtype"):
        debut_mm(x, vals, PADDED, (5, 13), bias=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="debut_mm: bias"):
        debut_mm(x, vals, PADDED, (5, 13), bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"debut_mm: bias must have shape \(5,\)"):
        debut_mm(x, vals, PADDED, (5, 13), bias=torch.zeros(4))


@given(op=operators(np.float64), impl=st.sampled_from(IMPLS))
@settings(max_examples=10)
def test_gradcheck_random_chains(op, impl):
    m, n = op.shape
    vals = [torch.tensor(np.array(v), requires_grad=True) for v in op.factors]
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *v: debut_mm(x, v, op.chain, op.shape, impl),
                                    (x, *vals))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chain", [CONV_BULGING, "4 <-(2,2,2)- 4 <-(2,4,1)- 8"])
@pytest.mark.parametrize("flatten", ["cin_kh_kw", "kh_kw_cin"])
def test_conv_gradcheck_float64(impl, chain, flatten):
    torch.manual_seed(0)
    conv = DeButConv2d(2, 3, 2, stride=(1, 2), padding=1, chain=chain, dtype=torch.float64,
                       impl=impl, flatten=flatten)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    params = list(conv.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
                conv, dict(zip([n for n, _ in conv.named_parameters()], ps))):
            return conv(x)

    assert torch.autograd.gradcheck(f, (x, *params))


def test_frozen_values_input_gradient():
    torch.manual_seed(0)
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    layer.requires_grad_(False)
    x = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    layer.impl = "torch"
    assert torch.autograd.gradcheck(layer, (x,))


# ---------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------

CONV_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=(2, 0)),
    dict(kernel_size=(3, 2), dilation=(2, 1), padding="same"),
    dict(kernel_size=2, padding="same"),  # asymmetric padding
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=(1, 2), padding_mode="replicate"),
    dict(kernel_size=3, padding=2, padding_mode="circular"),
    dict(kernel_size=3, padding=1, bias=False),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("flatten", ["cin_kh_kw", "kh_kw_cin"])
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv_matches_nn_conv2d(kw, flatten, impl):
    torch.manual_seed(0)
    kh, kw_ = (kw["kernel_size"],) * 2 if isinstance(kw["kernel_size"], int) else \
        kw["kernel_size"]
    cin, cout = 3, 5
    conv = DeButConv2d(cin, cout, chain="auto", flatten=flatten, impl=impl,
                       dtype=torch.float64, **kw)
    assert conv.chain.shape[1] >= cin * kh * kw_
    dense = conv.to_dense()
    assert isinstance(dense, torch.nn.Conv2d) and dense.padding_mode == conv.padding_mode
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(conv(x), dense(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv(x[0]), dense(x[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flatten", ["cin_kh_kw", "kh_kw_cin"])
def test_conv_from_dense_exact_on_a_debut_filter(flatten):
    """A filter that *is* a DeBut product in the chosen flattening is recovered exactly."""
    chain = Chain.parse(db.PAPER_CHAINS["lenet_conv2_mono1"])
    op = DeBut.random(chain, seed=3)
    Wm = torch.from_numpy(op.to_dense())
    w = (Wm.reshape(16, 8, 3, 3) if flatten == "cin_kh_kw"
         else Wm.reshape(16, 3, 3, 8).permute(0, 3, 1, 2))
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w)
    layer = DeButConv2d.from_dense(conv, chain=chain, method="hierarchical", flatten=flatten)
    assert layer.fit_error < 1e-10
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.to_dense().weight, conv.weight, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------
# conversions and state
# ---------------------------------------------------------------------------------------

def test_from_dense_exact_and_debut_round_trip():
    op = DeBut.random(db.PAPER_CHAINS["lenet_fc1_mono2"], seed=1)
    lin = torch.nn.Linear(400, 128, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(op.to_dense()))
    layer = DeButLinear.from_dense(lin, chain=op.chain, method="hierarchical")
    assert layer.fit_error < 1e-10 and layer.fit_info.method == "hierarchical"
    x = torch.randn(3, 400, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-10, atol=1e-10)
    back = layer.to_debut()
    assert back.chain == op.chain and back.shape == (128, 400)
    again = DeButLinear.from_debut(back, bias=layer.bias, dtype=torch.float64)
    torch.testing.assert_close(again(x), layer(x), rtol=0, atol=0)


def test_from_dense_random_reports_its_error():
    lin = torch.nn.Linear(16, 8)
    layer = DeButLinear.from_dense(lin, chain="8 <-(2,2,4)- 8 <-(4,8,1)- 16", method="random")
    assert layer.fit_info is None and layer.fit_error > 0.5
    torch.testing.assert_close(layer.bias, lin.bias)


def test_state_dict_round_trip_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        DeButConv2d(2, 3, 2, padding=1, chain=CONV_BULGING, flatten="kh_kw_cin"),
        torch.nn.Flatten(), DeButLinear(3 * 5 * 5, 10, chain="auto"))
    x = torch.randn(2, 2, 4, 4)
    torch.save({"state": model.state_dict(), "x": x, "y": model(x).detach(),
                "chain": model[2].chain.format()}, tmp_path / "m.pt")
    script = textwrap.dedent(f"""
        import torch
        from debutla.torch import DeButConv2d, DeButLinear
        d = torch.load({str(tmp_path / 'm.pt')!r})
        model = torch.nn.Sequential(
            DeButConv2d(2, 3, 2, padding=1, chain={CONV_BULGING!r}, flatten="kh_kw_cin"),
            torch.nn.Flatten(), DeButLinear(75, 10, chain=d["chain"]))
        model.load_state_dict(d["state"])
        assert torch.equal(model(d["x"]), d["y"]), "outputs differ"
        wrong = DeButLinear(75, 10, chain="16 <-(4,5,1)- 20 <-(1,4,5)- 80")
        try:
            wrong.load_state_dict({{k[2:]: v for k, v in d["state"].items()
                                   if k.startswith("2.")}})
        except (ValueError, RuntimeError) as e:
            print("refused:", type(e).__name__)
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and r.stdout.strip().endswith("ok")


def test_extra_state_mismatch_names_both_chains():
    a = DeButLinear(13, 5, chain=PADDED)
    b = DeButLinear(13, 5, chain="8 <-(2,2,4)- 8 <-(4,8,1)- 16")
    sd = a.state_dict()
    for k in [k for k in sd if k.startswith("factors")]:
        del sd[k]
    with pytest.raises(ValueError, match="saved layer has chain"):
        b.load_state_dict(sd, strict=False)


# ---------------------------------------------------------------------------------------
# compress and the paper's counts
# ---------------------------------------------------------------------------------------

class LeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 16, 3)
        self.fc = torch.nn.Linear(400, 128)
        self.fc2 = torch.nn.Linear(128, 64)
        self.fc3 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc3(self.fc2(torch.relu(self.fc(x.flatten(1)))))


def test_compress_reproduces_paper_parameter_counts():
    net = LeNet()
    small, rep = compress(net, {"fc": db.PAPER_CHAINS["lenet_fc1_mono2"]}, method="random")
    assert isinstance(small.fc, DeButLinear) and isinstance(net.fc, torch.nn.Linear)
    assert rep.params_before == 61482 and rep.params_after == 17962
    assert round(100 * rep.mc, 2) == 70.78
    assert round(100 * rep.layers[0].lc, 2) == 85.00
    small, rep = compress(net, {"fc": db.PAPER_CHAINS["lenet_fc1_mono2"],
                                "fc2": db.PAPER_CHAINS["lenet_fc2"],
                                "conv2": db.PAPER_CHAINS["lenet_conv2_bulg1"]},
                          method="random")
    # the paper's 10.19K / MC 83.43% row is CONV2's bulg1 chain (mono1 gives 10,026)
    assert rep.params_after == 10186 and round(100 * rep.mc, 2) == 83.43
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "MC 83.43%" in str(rep)


def test_compress_fits_pretrained_lenet_fc1():
    d = np.load(LENET, allow_pickle=False)
    net = LeNet()
    net.load_state_dict({k.replace("_", ".", 1): torch.from_numpy(d[k]) for k in d.files})
    small, rep = compress(net, {"fc": db.PAPER_CHAINS["lenet_fc1_mono2"]}, method="auto",
                          max_sweeps=10, seed=0)
    # the paper's ALS reaches 0.853; a correct ALS from the hierarchical start does better
    assert rep.layers[0].fit_error < 0.853
    W = net.fc.weight.detach().double()
    D = small.fc.dense_weight().detach().double()
    assert abs(float((W - D).norm() / W.norm()) - rep.layers[0].fit_error) < 1e-5


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

def test_bad_inputs_are_named():
    layer = DeButLinear(13, 5, chain=PADDED)
    with pytest.raises(ValueError, match="DeButLinear.*in_features=13"):
        layer(torch.randn(2, 12))
    with pytest.raises(TypeError, match="DeButLinear.*dtype"):
        layer(torch.randn(2, 13, dtype=torch.float64))
    with pytest.raises(ValueError, match="DeButLinear.*meta"):
        layer(torch.randn(2, 13, device="meta"))
    with pytest.raises(TypeError, match="DeButLinear.*torch.Tensor"):
        layer(np.ones((2, 13), dtype=np.float32))
    with pytest.raises(ValueError, match="DeButLinear.*cannot serve"):
        DeButLinear(17, 5, chain=PADDED)
    with pytest.raises(ValueError, match="DeButLinear.*parse"):
        DeButLinear(17, 5, chain="8 <-(3,3,3)- 8")
    with pytest.raises(ValueError, match="DeButLinear.*impl"):
        DeButLinear(13, 5, chain=PADDED, impl="tpu")
    with pytest.raises(ValueError, match="DeButConv2d.*kernel size"):
        DeButConv2d(8, 16, 5, chain=db.PAPER_CHAINS["lenet_conv2_mono1"])
    conv = DeButConv2d(8, 16, 3, chain=db.PAPER_CHAINS["lenet_conv2_mono1"])
    with pytest.raises(ValueError, match="DeButConv2d.*in_channels = 8"):
        conv(torch.randn(1, 3, 9, 9))
    with pytest.raises(ValueError, match="DeButConv2d.*smaller than"):
        conv(torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="DeButConv2d.*groups"):
        DeButConv2d(8, 16, 3, groups=2)
    with pytest.raises(TypeError, match="from_dense.*nn.Linear"):
        DeButLinear.from_dense(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="compress.*only nn.Linear"):
        compress(torch.nn.Sequential(torch.nn.ReLU()), {"0": "auto"})
    with pytest.raises(ValueError, match="compress.*not a submodule"):
        compress(torch.nn.Sequential(torch.nn.ReLU()), {"fc": "auto"})


def test_core_does_not_import_torch():
    code = "import sys, debutla\nassert 'torch' not in sys.modules, 'core imported torch'\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_model_with_debut_layers(device):
    """A compiled conv + linear model against the eager model on the CPU; on CUDA
    (the chain kernel through CuPy, or torch operations without it) compiled with
    ``aot_eager``: the custom op's registration (fake tensor, autograd), no codegen."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        DeButConv2d(1, 8, 3, chain="8 <-(2,3,4)- 12 <-(4,3,1)- 9"), torch.nn.ReLU(),
        torch.nn.Flatten(), DeButLinear(8 * 6 * 6, 10))
    x = torch.randn(4, 1, 8, 8)
    ref = net(x)
    ref.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net = net.to(device)
    on_cpu = device == "cpu"
    y = torch.compile(net, **({} if on_cpu else {"backend": "aot_eager"}))(x.to(device))
    y.sum().backward()
    torch.testing.assert_close(y.cpu(), ref, **({} if on_cpu else {"rtol": 1e-5,
                                                                     "atol": 1e-5}))
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad.cpu(), g, **({} if on_cpu else {"rtol": 1e-4,
                                                                           "atol": 1e-5}))


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_eager_calls_skip_the_custom_op_and_give_the_same_bits(monkeypatch, impl):
    """Eager calls run the implementation directly (no gradient recorded) or through the
    plain autograd function (gradient recorded), never the custom op's dispatch; outputs
    and gradients are the same bits as through the registered op."""
    torch.manual_seed(0)
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    layer.impl = impl
    x = torch.randn(4, 13, dtype=torch.float64)
    g = torch.randn(4, 5, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    monkeypatch.setattr(_ops, "_plain_eager", lambda x: False)  # as under torch.compile
    ref = layer(xg)
    ref.backward(g)
    ref_grads = [xg.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    monkeypatch.undo()
    layer.zero_grad(set_to_none=True)
    xg.grad = None
    calls: list = []
    _spy(monkeypatch, _ops, "_debut_mm_op", calls, "op")
    _spy(monkeypatch, _ops._DeButMM, "apply", calls, "fn")
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            assert torch.equal(layer(x), ref.detach())
    frozen = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    frozen.impl = impl
    frozen.requires_grad_(False)
    frozen(x)  # grad mode on, but nothing requires a gradient
    assert calls == []
    y = layer(xg)  # the values and the input require gradients: the function
    assert calls == ["fn"] and torch.equal(y.detach(), ref.detach())
    y.backward(g)
    grads = [xg.grad] + [p.grad for p in layer.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    frozen(x.clone().requires_grad_(True))  # the input requires one: the function
    assert calls == ["fn", "fn"]


@pytest.mark.parametrize("frozen", [False, True])
def test_training_step_looks_the_operator_up_once(monkeypatch, frozen):
    """The backward reuses the forward's CPU operator (no second check of the values);
    its gradients equal those of a call that looks it up again.  The operator reads the
    packed values in place when their gradients are needed, else it is the checked
    snapshot (a frozen layer's backward is an adjoint product)."""
    torch.manual_seed(2)
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    layer.requires_grad_(not frozen)
    x = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 5, dtype=torch.float64)
    layer(x).backward(g)
    ref = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    x.grad = None
    layer.zero_grad(set_to_none=True)
    calls: list = []
    _spy(monkeypatch, _ops, "_cpu_operator", calls, "checked")
    _spy(monkeypatch, _ops, "_live_operator", calls, "live")
    layer(x).backward(g)
    assert calls == (["checked"] if frozen else ["live"])
    got = [x.grad] + [p.grad for p in layer.parameters() if p.grad is not None]
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("plain", [True, False])
def test_second_derivatives_raise(monkeypatch, plain):
    """Gradients of gradients are not implemented: both the plain autograd function and
    the registered op raise, instead of treating the first derivative as a constant."""
    if not plain:
        if not _ops._HAS_CUSTOM_OP:
            pytest.skip("this torch has no torch.library.custom_op")
        monkeypatch.setattr(_ops, "_plain_eager", lambda x: False)
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    x = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    gx, = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_operator_cache_sees_in_place_updates():
    """Inference reuses the CPU operator; any autograd-visible write invalidates it."""
    torch.manual_seed(0)
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    x = torch.randn(4, 13, dtype=torch.float64)
    with torch.inference_mode():
        y0 = layer(x)
    with torch.no_grad():
        layer.factors[1].mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), layer.bias + 2 * (y0 - layer.bias))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    opt.step()
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), layer.to_dense()(x))
    layer.load_state_dict(DeButLinear(13, 5, chain=PADDED, dtype=torch.float64).state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), layer.to_dense()(x))


def test_operator_cache_sees_writes_through_data():
    """Writes that bypass the version counter (``.data``) are seen too."""
    layer = DeButLinear(13, 5, chain=PADDED, dtype=torch.float64)
    x = torch.randn(4, 13, dtype=torch.float64)
    with torch.inference_mode():
        y0 = layer(x)
    layer.factors[0].data[0, 0, 0, 0] += 1.0
    with torch.inference_mode():
        y1 = layer(x)
    assert not torch.equal(y0, y1)
    torch.testing.assert_close(y1, layer.to_dense()(x))


@pytest.mark.parametrize("name", ["debutla.torch._ops", "debutla.torch.layers",
                                  "debutla.torch.compress", "debutla.torch.tradeoff",
                                  "debutla.torch.restore"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS
                          | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------

def test_threads_follow_torch_unless_debutla_says_otherwise(monkeypatch):
    from debutla._config import config
    from debutla.torch import _ops

    monkeypatch.delenv("DEBUTLA_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    db._config.reload_environment()
    try:
        torch.set_num_threads(1)
        assert _ops._num_threads() == 1
        torch.set_num_threads(2)
        assert _ops._num_threads() == 2
        with config(threads=3):
            assert _ops._num_threads() == 3
    finally:
        torch.set_num_threads(old)
        db._config.reload_environment()


@pytest.mark.parametrize("frozen", [False, True])
def test_forward_and_backward_are_bitwise_equal_for_any_thread_count(monkeypatch, frozen):
    """Several groups of tiles, split over 1, 2 or 3 threads: the same bits, and right."""
    import debutla.backends.numba_ as nbk
    from debutla.torch import _kernels

    monkeypatch.setattr(nbk, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_kernels, "GROUP_MIN_WORK", 0)
    chain = "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72"
    batch = 3 * 64 + 5  # 4 tiles of the backward kernel, 4 groups
    assert len(_kernels.groups_of(batch, 64, Chain.parse(chain).nnz)) == 5
    torch.manual_seed(0)
    layer = DeButLinear(72, 16, chain=chain, bias=False)
    layer.requires_grad_(not frozen)
    x = torch.randn(batch, 72)
    w = torch.randn(batch, 16)
    results = {}
    old = torch.get_num_threads()
    try:
        # background=False: every product on the kernel it keeps using (else a kernel
        # that finishes loading in the background between two thread counts, the
        # adjoint's say, changes the last bits: a change of kernel, not of threads)
        with db.config(background=False):
            for th in (1, 2, 3):
                torch.set_num_threads(th)
                layer.zero_grad()
                xr = x.clone().requires_grad_(True)
                y = layer(xr)
                (y * w).sum().backward()
                results[th] = [y.detach(), xr.grad] + (
                    [] if frozen else [p.grad.clone() for p in layer.factors])
    finally:
        torch.set_num_threads(old)
    for th in (2, 3):
        for i, (a, b) in enumerate(zip(results[1], results[th])):
            assert torch.equal(a, b), (th, i)
    # and right: against the float64 dense reference
    D = torch.tensor(reference(DeBut(chain, [p.detach().numpy() for p in layer.factors])))
    torch.testing.assert_close(results[1][0].double(), x.double() @ D.T, rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(results[1][1].double(), w.double() @ D, rtol=1e-4, atol=1e-4)


def test_training_steps_run_the_compiled_kernel(monkeypatch):
    """After the first step, the forward of every training step (new values each time)
    runs the chain's compiled kernel, not the generic one."""
    import debutla.backends.numba_ as nbk
    from codegen import forced_codegen

    torch.manual_seed(0)
    layer = DeButLinear(36, 24, chain="24 <-(3,2,4)- 16 <-(4,9,1)- 36", impl="numba")
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    x = torch.randn(37, 36)

    def step():
        loss = layer(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with forced_codegen():
        with db.config(background=False):
            step()  # compiles (or loads) the chain's kernel
        seen = []
        inner = nbk._run_generic
        monkeypatch.setattr(nbk, "_run_generic", lambda *a: seen.append(1) or inner(*a))
        # nor is the kernel source generated again for the new values' state
        source = nbk._cg.generate_source
        monkeypatch.setattr(nbk._cg, "generate_source",
                            lambda *a: seen.append("source") or source(*a))
        for _ in range(3):
            step()
    assert seen == []
