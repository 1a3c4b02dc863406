"""The torch layers' packed parameters and the live operator that reads them in place
(debutla.torch._ops._live_operator, numba_.prepare(flat=...)): no snapshot, no check,
and every write to the values seen by the next product."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402
from debutla.torch import DeButConv2d, DeButLinear, _ops  # noqa: E402

CHAIN = db.PAPER_CHAINS["lenet_fc1_mono2"]  # 128 x 400, compiled by other tests too


def _layer(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layer = DeButLinear(400, 128, chain=CHAIN, dtype=dtype)
    torch.nn.init.normal_(layer.bias)
    return layer


def _packed(layer) -> bool:
    return _ops.packed_values(layer._values()) is not None


def _reference(layer, x):
    """The product from a fresh copy of the values (the checked, snapshot path)."""
    with torch.no_grad():
        return x @ layer.dense_weight().t() + layer.bias


@pytest.fixture
def spy(monkeypatch):
    """Which operator each forward product used: "live" or "checked"."""
    used: list = []
    real_live, real_checked = _ops._live_operator, _ops._cpu_operator

    def live(*a):
        op = real_live(*a)
        if op is not None:
            used.append("live")
        return op

    def checked(*a, **k):
        used.append("checked")
        return real_checked(*a, **k)
    monkeypatch.setattr(_ops, "_live_operator", live)
    monkeypatch.setattr(_ops, "_cpu_operator", checked)
    return used


def test_packed_values_finds_back_to_back_views_of_one_storage():
    buf = torch.arange(10.0)
    assert torch.equal(_ops.packed_values([buf[:4].view(2, 2), buf[4:]]), buf)
    assert _ops.packed_values([buf[4:], buf[:4]]) is None  # out of order
    assert _ops.packed_values([buf[:4], buf[5:]]) is None  # a gap
    assert _ops.packed_values([buf[:4], torch.arange(6.0)]) is None  # two storages
    assert _ops.packed_values([buf[:4], buf[4:].view(2, 3).t()]) is None  # not contiguous
    assert _ops.packed_values([buf[:4], buf[4:].double()]) is None  # two dtypes


@pytest.mark.parametrize("make", [
    lambda: _layer(),
    lambda: DeButConv2d(3, 8, 3, chain="8 <-(2,3,4)- 12 <-(4,9,1)- 27"),
])
def test_layers_are_built_packed_and_stay_packed(make):
    layer = make()
    assert _packed(layer)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        x = torch.randn(5, *((400,) if isinstance(layer, DeButLinear) else (3, 6, 6)))
        layer(x).square().sum().backward()
        opt.step()
    assert _packed(layer)
    state = layer.state_dict()
    fresh = make()
    fresh.load_state_dict(state)
    assert _packed(fresh)
    for a, b in zip(fresh._values(), layer._values()):
        assert torch.equal(a, b)


def test_moves_and_casts_pack_again_and_shared_memory_keeps_the_buffer():
    layer = _layer()
    layer.double()
    assert _packed(layer) and layer.factors[0].dtype == torch.float64
    layer.float()
    assert _packed(layer)
    before = [p.data_ptr() for p in layer._values()]
    layer.share_memory()
    assert _packed(layer) and layer.factors[0].is_shared()
    assert len({p.data_ptr() - b for p, b in zip(layer._values(), before)}) == 1


def test_torch_save_and_load_of_a_whole_layer_keep_it_packed():
    layer = _layer()
    f = io.BytesIO()
    torch.save(layer, f)
    f.seek(0)
    back = torch.load(f, weights_only=False)
    assert _packed(back)
    x = torch.randn(7, 400)
    with torch.inference_mode():
        assert torch.equal(back(x), layer(x))


def _check_in_place_inference(layer, x, spy) -> None:
    """Inference on ``layer`` reads its values where they lie: every write is seen
    (through ``.data`` and a NumPy view, writes autograd never sees), and the results
    are the bits of the checked path (a snapshot of the values)."""
    shape = (layer.out_features, layer.in_features)
    with db.config(background=False), torch.inference_mode():
        y0 = layer(x)
        torch.testing.assert_close(y0, _reference(layer, x))
        layer.factors[1].data.mul_(-2.0)
        y1 = layer(x)
        layer.factors[0].detach().numpy()[0, 0, 0, 0] += 1.0
        y2 = layer(x)
    assert spy and set(spy) == {"live"}
    assert not torch.equal(y0, y1) and not torch.equal(y1, y2)
    torch.testing.assert_close(y2, _reference(layer, x))
    with db.config(background=False), torch.inference_mode():
        op = _ops._cpu_operator(layer._values(), layer.chain, shape)
        want = _ops._numba_rows(x, layer._values(), layer.chain, shape, bias=layer.bias,
                                op=op)
    assert torch.equal(y2, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [3, 16, 300])
def test_inference_reads_the_values_in_place_and_sees_every_write(spy, dtype, batch):
    layer = _layer(dtype)
    _check_in_place_inference(layer, torch.randn(batch, 400, dtype=dtype), spy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 2])
def test_one_or_two_rows_read_in_place_where_the_one_row_kernel_reads_the_values(
        spy, dtype, batch):
    """A butterfly layer (no t = 1, r >= 4 factor: the one-row kernel reads the packed
    values as they lie) serves inference on one or two rows in place too; with
    gradients (training) those stay on the checked path."""
    chain = db.Chain.butterfly(64)
    assert _ops._single_in_place(chain)
    torch.manual_seed(1)
    layer = DeButLinear(64, 64, chain=chain, dtype=dtype)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(batch, 64, dtype=dtype)
    _check_in_place_inference(layer, x, spy)
    spy.clear()
    layer(x).sum().backward()
    assert spy == ["checked"]


def test_one_and_two_rows_and_frozen_values_use_the_checked_path(spy):
    """(The LeNet chain's first factor, (16, 25, 1), is one the one-row kernel reads
    transposed: a copy of the values at each product, so one or two rows keep the
    checked snapshot.)"""
    layer = _layer()
    with torch.inference_mode():
        layer(torch.randn(1, 400))
        layer(torch.randn(2, 400))
    assert spy == ["checked", "checked"]
    spy.clear()
    layer(torch.randn(8, 400)).sum().backward()  # the values' gradients: read in place
    assert spy == ["live"]
    spy.clear()
    layer.requires_grad_(False)  # frozen: the backward is an adjoint product
    layer(torch.randn(8, 400, requires_grad=True)).sum().backward()
    assert spy == ["checked"]


@pytest.mark.parametrize("generated", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_steps_on_packed_values_match_the_checked_path_bitwise(monkeypatch, dtype,
                                                                        generated):
    """Forward, backward and SGD steps on the live operator give the bits of the same
    steps on an unpacked copy (the checked snapshot), step after step, on the generic
    backward and on the chain's generated one."""
    ready: list = []
    real_ready = nbk.backward_ready
    monkeypatch.setattr(nbk, "backward_ready",
                        lambda *a: ready.append(real_ready(*a)) or ready[-1])
    if generated:
        monkeypatch.setattr(nbk, "BACKWARD_MIN_NNZ", 0)
    layer = _layer(dtype)
    twin = copy.deepcopy(layer)
    twin.factors[0] = torch.nn.Parameter(twin.factors[0].detach().clone())  # unpacked
    assert _packed(layer) and not _packed(twin)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (layer, twin)]
    torch.manual_seed(3)
    with db.config(background=False):
        for _ in range(3):
            x = torch.randn(300, 400, dtype=dtype, requires_grad=True)
            g = torch.randn(300, 128, dtype=dtype)
            outs = []
            for m, opt in zip((layer, twin), opts):
                opt.zero_grad()
                xg = x.detach().clone().requires_grad_(True)
                y = m(xg)
                y.backward(g)
                outs.append([y.detach(), xg.grad] + [p.grad for p in m.parameters()])
                opt.step()
            for a, b in zip(*outs):
                assert torch.equal(a, b)
    assert ready and all(r == generated for r in ready)  # the backward meant


def test_deep_copies_unpickled_layers_and_assigned_state_dicts_are_packed_again():
    """Each of these gives every parameter a storage of its own; the layer packs again."""
    layer = _layer()
    twin = copy.deepcopy(layer)
    assert _packed(twin) and twin.factors[0].data_ptr() != layer.factors[0].data_ptr()
    import pickle
    back = pickle.loads(pickle.dumps(layer))
    assert _packed(back)
    fresh = _layer(seed=1)
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
             for k, v in layer.state_dict().items()}
    fresh.load_state_dict(state, assign=True)
    assert _packed(fresh)
    x = torch.randn(8, 400)
    with torch.inference_mode():
        y = layer(x)
        for other in (twin, back, fresh):
            assert torch.equal(other(x), y)


def test_a_replaced_parameter_unpacks_the_layer_without_stale_results(spy):
    layer = _layer()
    x = torch.randn(9, 400)
    with torch.inference_mode():
        layer(x)
    layer.factors[2] = torch.nn.Parameter(layer.factors[2].detach() * 3.0)
    assert not _packed(layer)
    with torch.inference_mode():
        y = layer(x)
    assert spy[-1] == "checked"
    torch.testing.assert_close(y, _reference(layer, x))


def test_a_cached_live_operator_serves_only_values_lying_where_it_reads(spy):
    """A hit needs every value at its recorded address, shape, dtype and contiguity:
    a parameter moved to other memory (same object, same first factor: the same cache
    key) takes the checked path, and is read in place again once it is back."""
    layer = _layer()
    x = torch.randn(9, 400)
    with torch.inference_mode():
        y0 = layer(x)
    assert spy[-1] == "live"
    p = layer.factors[-1]
    view = p.data
    p.data = view.clone() * 2.0
    with torch.inference_mode():
        y = layer(x)
    assert spy[-1] == "checked"
    torch.testing.assert_close(y, _reference(layer, x))
    assert not torch.allclose(y, y0)
    p.data = view
    cached = len(_ops._LIVE_CACHE)
    with torch.inference_mode():
        y = layer(x)
    assert spy[-1] == "live" and len(_ops._LIVE_CACHE) == cached  # the same entry
    assert torch.equal(y, y0)


def test_a_live_state_makes_its_derived_values_again_when_the_values_change():
    rng = np.random.default_rng(0)
    chain = db.Chain.parse("8 <-(4,2,1)- 4 <-(2,2,1)- 4")  # a t = 1, r = 4 factor
    flat = rng.standard_normal(chain.nnz)
    views, at = [], 0
    for spec in chain:
        size = int(np.prod(spec.value_shape))
        views.append(flat[at:at + size].reshape(spec.value_shape))
        at += size
    st = nbk.prepare(tuple(views), flat=flat)
    assert st.live and st.flat is flat
    before = (st.vflat.copy(), st.tflat.copy(), st.adjoint("T").flat.copy())
    assert st.tflat is st.tflat  # kept while the values are unchanged
    flat *= 2.0
    np.testing.assert_array_equal(st.vflat, 2.0 * before[0])
    np.testing.assert_array_equal(st.tflat, 2.0 * before[1])
    np.testing.assert_array_equal(st.adjoint("T").flat, 2.0 * before[2])
    np.testing.assert_array_equal(st.conj_flat(), flat)  # real: its own conjugate
    x = rng.standard_normal((1, 4))
    op = db.DeBut(chain, views, backend="numba", copy=False)
    op._states[("numba", flat.dtype)] = st
    with db.config(background=False):  # the one-row kernel reads vflat
        np.testing.assert_allclose(op.matmat_rows(x), x @ op.to_dense().T, rtol=1e-12)
        flat *= -1.0
        np.testing.assert_allclose(op.matmat_rows(x), x @ op.to_dense().T, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (lambda f: f[:-1], "flat must be"),
    (lambda f: f.astype(np.float32), "flat must be"),
    (lambda f: f.reshape(2, -1), "flat must be"),
    (lambda f: f[::-1], "flat must be"),
    (lambda f: f.copy(), "factor 0 is not the view"),
])
def test_prepare_refuses_a_flat_that_is_not_the_factors_packed(bad, match):
    flat = np.arange(12.0)
    views = (flat[:4].reshape(1, 2, 2, 1), flat[4:].reshape(1, 2, 2, 2))
    with pytest.raises(ValueError, match=match):
        nbk.prepare(views, flat=bad(flat))
    ro = flat.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="flat must be"):
        nbk.prepare((ro[:4].reshape(1, 2, 2, 1), ro[4:].reshape(1, 2, 2, 2)), flat=ro)
    with pytest.raises(ValueError, match="factor 1 is not the view"):
        nbk.prepare((flat[:4].reshape(1, 2, 2, 1), flat[:8].reshape(1, 2, 2, 2)),
                    flat=flat)
