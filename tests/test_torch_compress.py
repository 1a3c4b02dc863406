"""Compression with a size/accuracy choice: budgets, per-layer options, calibration data.

The references are independent of the code under test: ``nn.Conv2d`` itself for the
patch rows, :func:`debutla.factorize` called directly for the calibration fits, and the
budgets' arithmetic for the chain sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla.torch import (DeButConv2d, DeButLinear, compress, layer_tradeoff,  # noqa: E402
                           load_compressed)
from debutla.torch.layers import _calibration_X  # noqa: E402
from debutla.torch.tradeoff import format_tradeoff  # noqa: E402
from compress_net import Net  # noqa: E402


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().double()


def _images(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 14, 14, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------
# from_dense: budgets
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [900, 2000, 5000])
def test_from_dense_max_params_picks_a_chain_within_budget(budget):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48)
    layer = DeButLinear.from_dense(lin, max_params=budget, method="hierarchical")
    assert layer.nnz <= budget
    assert layer.fit_info.n_params == layer.nnz
    assert layer.fit_info.chain == layer.chain
    # the layer holds what was fitted: its dense weight has the reported error
    W = lin.weight.detach().double()
    D = layer.dense_weight().detach().double()
    assert abs(float((W - D).norm() / W.norm()) - layer.fit_error) < 1e-5
    x = torch.randn(5, 96)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + lin.bias)


def test_from_dense_budget_more_values_fit_better():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3)
    errs = [DeButConv2d.from_dense(conv, max_params=b, method="hierarchical").fit_error
            for b in (300, 1100)]
    assert errs[1] < errs[0]


def test_from_dense_rel_error_target():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    layer = DeButLinear.from_dense(lin, rel_error=0.6, method="hierarchical")
    info = layer.fit_info
    assert info.target == 0.6
    assert info.target_met == (layer.fit_error <= 0.6 + 1e-12)


def test_from_dense_random_with_budget_uses_design_chain():
    lin = torch.nn.Linear(400, 128)
    layer = DeButLinear.from_dense(lin, method="random", max_params=8000)
    assert layer.chain == db.design_chain(128, 400, max_params=8000)
    assert layer.fit_info is None and layer.fit_error > 0
    with pytest.raises(TypeError, match="from_dense.*random.*rel_error"):
        DeButLinear.from_dense(lin, method="random", rel_error=0.5)
    with pytest.raises(ValueError, match="from_dense.*max_params"):
        DeButLinear.from_dense(lin, method="random", max_params=10)


def test_from_dense_budget_needs_auto_chain():
    lin = torch.nn.Linear(16, 8)
    with pytest.raises(ValueError, match="max_params.*chain='auto'"):
        DeButLinear.from_dense(lin, chain="8 <-(2,2,4)- 8 <-(4,8,1)- 16", max_params=100)


# ---------------------------------------------------------------------------------------
# rows: the matrix's view of a layer's input
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flatten", ["cin_kh_kw", "kh_kw_cin"])
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2),
                                dict(padding="same", padding_mode="reflect"),
                                dict(padding=(1, 2), padding_mode="circular")])
def test_conv_rows_times_flattened_filter_is_the_convolution(flatten, kw):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, (3, 2), dtype=torch.float64, **kw)
    layer = DeButConv2d.from_dense(conv, method="random", flatten=flatten)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y = conv(x)
    rows = layer.rows(x)
    Wf = layer._flat(conv.weight.detach())
    out = (rows @ Wf.T + conv.bias).reshape(2, y.shape[2], y.shape[3], 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, y.detach())


def test_linear_rows_flattens_leading_dimensions():
    layer = DeButLinear(16, 8)
    x = torch.randn(2, 3, 16)
    assert torch.equal(layer.rows(x), x.reshape(6, 16))
    with pytest.raises(ValueError, match="in_features=16"):
        layer.rows(torch.randn(2, 15))


# ---------------------------------------------------------------------------------------
# from_dense: calibration inputs
# ---------------------------------------------------------------------------------------

def test_calibration_is_factorize_X_of_the_rows():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16, dtype=torch.float64)
    chain = "16 <-(2,2,8)- 16 <-(8,16,1)- 32"
    x = torch.randn(4, 10, 32, dtype=torch.float64) * torch.linspace(0.1, 3, 32)
    layer = DeButLinear.from_dense(lin, chain=chain, method="hierarchical", calibration=x,
                                   calibration_damping=0)
    X = x.reshape(-1, 32).numpy()
    op, info = db.factorize(lin.weight.detach().numpy(), chain, method="hierarchical",
                            X=X, return_info=True)
    np.testing.assert_allclose(layer.dense_weight().detach().numpy(), op.to_dense(),
                               rtol=1e-10, atol=1e-12)
    assert layer.fit_info.data_rel_error == pytest.approx(info.data_rel_error, rel=1e-10)
    plain = DeButLinear.from_dense(lin, chain=chain, method="hierarchical")
    Y = X @ lin.weight.detach().numpy().T

    def out_err(layer_):
        return np.linalg.norm(Y - X @ layer_.dense_weight().detach().numpy().T) / \
            np.linalg.norm(Y)
    assert out_err(layer) < out_err(plain)


def test_calibration_rows_are_drawn_and_damped():
    layer = DeButLinear(8, 4)
    x = torch.randn(100, 8)
    X = _calibration_X(layer, x, 30, 0.0, 0, "here")
    assert X.shape == (30, 8)
    # rows of x, without repeats, the same for the same seed
    full = x.double().numpy()
    hits = [np.flatnonzero((full == r).all(axis=1)) for r in X]
    assert all(len(h) == 1 for h in hits) and len({int(h[0]) for h in hits}) == 30
    assert np.array_equal(X, _calibration_X(layer, x, 30, 0.0, 0, "here"))
    Xd = _calibration_X(layer, x, None, 0.5, 0, "here")
    lam = 0.5 * float((full ** 2).sum()) / 8
    np.testing.assert_allclose(Xd[100:], np.sqrt(lam) * np.eye(8))
    np.testing.assert_array_equal(Xd[:100], full)


def test_damping_keeps_unexcited_directions_close_to_the_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, dtype=torch.float64)
    few = torch.randn(8, 64, dtype=torch.float64)  # 8 rows: most directions unseen
    chain = "32 <-(4,4,8)- 32 <-(8,16,1)- 64"
    with pytest.warns(UserWarning, match="8 rows for 64 inputs"):
        errs = [DeButLinear.from_dense(lin, chain=chain, method="hierarchical",
                                       calibration=few, calibration_damping=d).fit_error
                for d in (0.0, 0.01, 0.1, 1.0)]
    plain = DeButLinear.from_dense(lin, chain=chain, method="hierarchical").fit_error
    assert errs == sorted(errs, reverse=True) and errs[0] > 2 * plain
    assert errs[-1] < 1.2 * plain


def test_conv_calibration_uses_patches():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 8, 3, padding=1, dtype=torch.float64)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    chain = "8 <-(2,6,4)- 24 <-(4,3,1)- 18"
    layer = DeButConv2d.from_dense(conv, chain=chain, method="hierarchical", calibration=x,
                                   calibration_damping=0, calibration_rows=None)
    X = layer.rows(x).numpy()
    op = db.factorize(layer._flat(conv.weight.detach()).numpy(), chain,
                      method="hierarchical", X=X)
    np.testing.assert_allclose(layer.dense_weight().detach().numpy(), op.to_dense(),
                               rtol=1e-10, atol=1e-12)


def test_calibration_bad_input_is_named():
    lin = torch.nn.Linear(8, 4)
    where = "DeButLinear.from_dense"
    with pytest.raises(TypeError, match=f"{where}: calibration must be a torch.Tensor"):
        DeButLinear.from_dense(lin, calibration=np.ones((3, 8)))
    with pytest.raises(ValueError, match=f"{where}: calibration: .*in_features=8"):
        DeButLinear.from_dense(lin, calibration=torch.ones(3, 7))
    with pytest.raises(ValueError, match=f"{where}: calibration holds NaN"):
        DeButLinear.from_dense(lin, calibration=torch.full((3, 8), float("nan")))
    with pytest.raises(ValueError, match=f"{where}: calibration holds no inputs"):
        DeButLinear.from_dense(lin, calibration=torch.ones(0, 8))
    with pytest.raises(TypeError, match=f"{where}: give calibration .* or X"):
        DeButLinear.from_dense(lin, calibration=torch.ones(3, 8), X=np.ones((3, 8)))
    with pytest.raises(TypeError, match=f"{where}: method='random'.*calibration"):
        DeButLinear.from_dense(lin, method="random", calibration=torch.ones(3, 8))
    with pytest.raises(ValueError, match=f"{where}: calibration_rows"):
        DeButLinear.from_dense(lin, calibration=torch.ones(3, 8), calibration_rows=0)
    with pytest.raises(ValueError, match=f"{where}: calibration_damping"):
        DeButLinear.from_dense(lin, calibration=torch.ones(3, 8), calibration_damping=-1)
    with pytest.raises(ValueError, match="DeButConv2d.from_dense: calibration: .*in_channels"):
        DeButConv2d.from_dense(torch.nn.Conv2d(2, 4, 3), calibration=torch.ones(1, 3, 5, 5))


# ---------------------------------------------------------------------------------------
# compress: per-layer options, budgets, calibration
# ---------------------------------------------------------------------------------------

def test_compress_budgets_per_layer_and_global():
    net = _net()
    small, rep = compress(net, {"fc": {"ratio": 0.1}, "head.1": {"max_params": 700},
                                "conv2": "auto"}, method="hierarchical")
    by = {r.name: r for r in rep.layers}
    assert by["fc"].nnz <= 0.1 * 64 * 288 and by["head.1"].nnz <= 700
    assert by["conv2"].chain == db.design_chain(8, 36).format()
    for r in rep.layers:
        assert r.svd_rel_error is not None and r.data_rel_error is None
        assert r.method == "hierarchical"
    # a global ratio for every layer named; a per-layer budget overrides it
    small, rep = compress(net, ["fc", "head.1"], ratio=0.25, method="hierarchical")
    assert all(r.nnz <= 0.25 * r.shape[0] * r.shape[1] for r in rep.layers)
    small, rep = compress(net, {"fc": {"max_params": 2000}, "head.1": "auto"}, ratio=0.25,
                          method="hierarchical")
    assert rep.layers[0].nnz <= 2000 and rep.layers[1].nnz <= 0.25 * 32 * 64
    x = _images(4)
    assert small(x).shape == (4, 10)
    assert "SVD err" in str(rep)
    # an explicit chain is not subject to the call's budget (the other layers are)
    chain = db.Chain.parse("64 <-(4,72,16)- 1152 <-(16,4,1)- 288")
    small, rep = compress(net, {"fc": chain, "conv2": "auto"}, ratio=0.45,
                          method="hierarchical")
    assert small.fc.chain == chain and chain.nnz > 0.45 * 64 * 288
    assert rep.layers[1].nnz <= 0.45 * 8 * 36


@pytest.mark.filterwarnings("ignore:.*rows for 288 inputs")
def test_compress_calibration_records_each_layers_inputs():
    net = _net()
    x = _images(6)
    seen = {}
    hooks = [net.fc.register_forward_pre_hook(lambda m, a: seen.setdefault("fc", a[0])),
             net.conv2.register_forward_pre_hook(lambda m, a: seen.setdefault("c2", a[0]))]
    net(x)
    for h in hooks:
        h.remove()
    small, rep = compress(net, {"fc": {"max_params": 1500}, "conv2": "auto"},
                          method="hierarchical", calibration=x)
    fc = DeButLinear.from_dense(net.fc, max_params=1500, method="hierarchical",
                                calibration=seen["fc"])
    c2 = DeButConv2d.from_dense(net.conv2, method="hierarchical", calibration=seen["c2"])
    torch.testing.assert_close(small.fc.dense_weight(), fc.dense_weight())
    torch.testing.assert_close(small.conv2.dense_weight(), c2.dense_weight())
    assert all(r.data_rel_error is not None and r.svd_data_rel_error is not None
               for r in rep.layers)
    assert "out err" in str(rep)


@pytest.mark.filterwarnings("ignore:.*rows for 288 inputs")
def test_compress_calibration_restores_modes_and_takes_tuples():
    net = _net()
    net.train()
    net.head.eval()
    small, _ = compress(net, ["fc"], method="hierarchical", calibration=(_images(2),))
    assert net.training and not net.head.training and net.fc.training
    assert small.fc.training


def test_compress_checks_everything_before_fitting():
    net = _net()
    with pytest.raises(ValueError, match="layer 'head.3': max_params: no chain .* at most 5"):
        compress(net, {"fc": "auto", "head.3": {"max_params": 5}})
    with pytest.raises(TypeError, match="layer 'fc': unknown option.*'ratoi'"):
        compress(net, {"fc": {"ratoi": 0.1}})
    with pytest.raises(ValueError, match="layer 'fc': ratio must be a number in"):
        compress(net, ["fc"], ratio=1.5)
    with pytest.raises(ValueError, match="layer 'fc': give ratio or max_params"):
        compress(net, ["fc"], ratio=0.5, max_params=100)
    with pytest.raises(ValueError, match="layer 'fc': a budget .* chain='auto'"):
        compress(net, {"fc": {"chain": db.design_chain(64, 288).format(), "ratio": 0.2}})
    grouped = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match="compress: '1' is a grouped convolution"):
        compress(grouped, ["0", "1"])
    with pytest.raises(TypeError, match="layer 'fc': the spec must be"):
        compress(net, {"fc": 3})
    with pytest.raises(TypeError, match="compress: layers must be"):
        compress(net, "fc")
    with pytest.warns(UserWarning, match="compress: layer 'fc': .*6 rows for 288"):
        compress(net, ["fc"], method="hierarchical", calibration=_images(6))
    with pytest.raises(ValueError, match="compress: calibration: the model failed"):
        compress(net, ["fc"], calibration=torch.ones(2, 3))
    with pytest.raises(ValueError, match="layers \\['extra'\\] were not called"):
        _uncalled(net)


def _uncalled(net):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.extra = torch.nn.Linear(4, 4).double()

        def forward(self, x):
            return self.net(x)

    compress(Wrap(), ["extra"], calibration=_images(2))


# ---------------------------------------------------------------------------------------
# layer_tradeoff: the table to choose from
# ---------------------------------------------------------------------------------------

def test_layer_tradeoff_predicts_compress():
    net = _net()
    x = _images(400)
    recs = layer_tradeoff(net, ["fc", "conv2"], ratios=[0.1, 0.5], calibration=x,
                          methods=["hierarchical"])
    fc = [r for r in recs if r["layer"] == "fc"]
    assert [r["budget"] for r in fc] == [int(0.1 * 64 * 288), int(0.5 * 64 * 288)]
    assert all(r["n_params"] <= r["budget"] and r["ratio"] == r["n_params"] / (64 * 288)
               for r in fc)
    assert fc[1]["data_rel_error"] < fc[0]["data_rel_error"]
    # conv2 (8x36): 0.1 is below its smallest chain, so only 0.5 is kept
    assert [r["budget"] for r in recs if r["layer"] == "conv2"] == [int(0.5 * 8 * 36)]
    # compress at the same budget, same calibration, same method: the same chain and error
    small, rep = compress(net, {"fc": {"ratio": 0.5}}, method="hierarchical",
                          calibration=x)
    assert rep.layers[0].chain == fc[1]["chain"]
    assert rep.layers[0].data_rel_error == pytest.approx(fc[1]["data_rel_error"], rel=1e-9)
    assert "out err" in format_tradeoff(recs)
    # the default method ("auto", with the calibrated sweep default) predicts compress too
    auto = layer_tradeoff(net, ["fc"], ratios=[0.5], calibration=x)
    small, rep = compress(net, {"fc": {"ratio": 0.5}}, calibration=x)
    assert rep.layers[0].data_rel_error == pytest.approx(auto[0]["data_rel_error"], rel=1e-9)


def test_layer_tradeoff_bad_input():
    net = _net()
    with pytest.raises(ValueError, match="layer_tradeoff: 'nope' is not a submodule"):
        layer_tradeoff(net, ["nope"])
    with pytest.raises(TypeError, match="layer_tradeoff: 'head' is a Sequential"):
        layer_tradeoff(net, ["head"])
    with pytest.raises(ValueError, match="ratios must be numbers in"):
        layer_tradeoff(net, ["fc"], ratios=[0.0])
    with pytest.raises(ValueError, match="layer 'conv2': every ratio .* below the smallest"):
        layer_tradeoff(net, ["conv2"], ratios=[0.01])


# ---------------------------------------------------------------------------------------
# load_compressed: a compressed model's state dict into a fresh dense model
# ---------------------------------------------------------------------------------------

def test_load_compressed_in_a_fresh_process(tmp_path):
    net = _net()
    small, _ = compress(net, {"fc": {"ratio": 0.2}, "conv2": {"flatten": "kh_kw_cin"},
                              "head.1": "auto"}, method="hierarchical")
    opt = torch.optim.SGD(small.parameters(), lr=0.1)  # values move away from the fit
    x = _images(4)
    small(x).square().sum().backward()
    opt.step()
    torch.save(small.state_dict(), tmp_path / "small.pt")
    torch.save({"x": x, "y": small(x).detach()}, tmp_path / "io.pt")
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {here!r})
        from compress_net import Net
        from debutla.torch import DeButConv2d, DeButLinear, load_compressed
        net = load_compressed(Net().double(), torch.load({str(tmp_path / "small.pt")!r}))
        io = torch.load({str(tmp_path / "io.pt")!r})
        assert isinstance(net.fc, DeButLinear) and isinstance(net.head[1], DeButLinear)
        assert isinstance(net.conv2, DeButConv2d) and net.conv2.flatten == "kh_kw_cin"
        assert isinstance(net.conv1, torch.nn.Conv2d)
        assert torch.equal(net(io["x"]), io["y"]), "outputs differ"
        print("ok")
    """)
    env = dict(os.environ)
    root = os.path.dirname(here)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_load_compressed_keeps_debut_layers_and_checks_the_model():
    net = _net()
    small, _ = compress(net, {"fc": "auto", "conv2": "auto"}, method="random")
    sd = small.state_dict()
    # a model that is already compressed (DeBut layers in place) loads as it is
    again = load_compressed(compress(net, {"fc": "auto"}, method="random")[0], sd)
    assert torch.equal(again.fc.factors[0], small.fc.factors[0])
    assert torch.equal(again.conv2.factors[0], small.conv2.factors[0])
    wrong = _net()
    wrong.fc = torch.nn.Linear(288, 32).double()
    with pytest.raises(ValueError, match="layer 'fc': the saved layer serves a \\(64, 288\\)"):
        load_compressed(wrong, sd)
    wrong = _net()
    wrong.conv2 = torch.nn.Conv2d(4, 8, 1).double()
    with pytest.raises(ValueError, match="layer 'conv2': the saved layer has kernel size"):
        load_compressed(wrong, sd)
    wrong = _net()
    wrong.fc = torch.nn.Identity()
    with pytest.raises(TypeError, match="layer 'fc': .* is a Identity"):
        load_compressed(wrong, sd)
    wrong = _net()
    del wrong.fc
    with pytest.raises(ValueError, match="layer 'fc': .* no such submodule"):
        load_compressed(wrong, sd)
    with pytest.raises(TypeError, match="load_compressed: state_dict must be a mapping"):
        load_compressed(_net(), [1])
    with pytest.raises(TypeError, match="load_compressed: model must be an nn.Module"):
        load_compressed(sd, sd)


def test_compress_warns_when_a_layer_is_not_compressed():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8).double())
    with pytest.warns(UserWarning, match="layer '0': the chain .* not fewer than the dense"):
        small, rep = compress(net, {"0": "8 <-(8,16,1)- 16"}, method="hierarchical")
    assert rep.layers[0].lc == 0.0


def test_fitted_layers_have_balanced_factors(monkeypatch):
    """A fit may return factors orders of magnitude apart (data-aware fits of the paper's
    LeNet did: SGD then diverged to 9.8%); from_dense loads them balanced, same product."""
    real = db.factorize

    def skewed_fit(*a, **kw):
        op, info = real(*a, **kw)
        f = op.factors
        skew = [f[0] * 1e3] + list(f[1:-1]) + [f[-1] / 1e3]
        return db.DeBut(op.chain, skew, shape=op.shape), info

    monkeypatch.setattr(db, "factorize", skewed_fit)
    torch.manual_seed(0)
    lin = torch.nn.Linear(288, 64, dtype=torch.float64)
    chain = "64 <-(4,4,16)- 64 <-(4,4,4)- 64 <-(4,18,1)- 288"
    layer = DeButLinear.from_dense(lin, chain=chain, method="hierarchical")
    norms = [float(p.detach().norm()) for p in layer.factors]
    assert max(norms) / min(norms) < 3
    ref = DeButLinear.from_dense(lin, chain=chain, method="hierarchical")  # (skewed too)
    torch.testing.assert_close(layer.dense_weight(), ref.dense_weight())
    op = real(lin.weight.detach().numpy(), chain, method="hierarchical")
    np.testing.assert_allclose(layer.dense_weight().detach().numpy(), op.to_dense(),
                               rtol=1e-9, atol=1e-12)


def test_calibrated_fits_default_to_fewer_sweeps(monkeypatch):
    from debutla.torch.layers import CALIBRATED_MAX_SWEEPS

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, dtype=torch.float64)
    x = torch.randn(300, 64, dtype=torch.float64) @ torch.randn(64, 64, dtype=torch.float64)
    chain = "32 <-(4,4,8)- 32 <-(8,16,1)- 64"
    calls = []
    real = db.factorize

    def spy(*a, **kw):
        calls.append(kw.get("max_sweeps"))
        return real(*a, **kw)

    monkeypatch.setattr(db, "factorize", spy)
    DeButLinear.from_dense(lin, chain=chain, calibration=x, tol=0)
    DeButLinear.from_dense(lin, chain=chain, calibration=x, max_sweeps=3)
    DeButLinear.from_dense(lin, chain=chain)  # no calibration: factorize's own default
    DeButLinear.from_dense(lin, chain=chain, method="hierarchical", calibration=x)
    assert calls == [CALIBRATED_MAX_SWEEPS, 3, None, None]
