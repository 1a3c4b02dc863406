"""The chain-specialised CUDA kernel (debutla.backends._cuda_chain).

On every machine: the kernel's schedule (groups, output chunks, buffers, in-place square
factors, padding, the cut output) is run step by step in NumPy (:func:`emulate`) and
checked against an independent dense reference, and the generated source is compiled
with NVRTC where the NVRTC library is installed (``pip install nvidia-cuda-nvrtc-cu12``;
no GPU needed).  With CuPy and a GPU: the compiled kernel against the same reference, in
every storage type (float16/bfloat16 against float32 arithmetic).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import debutla as db
from debutla.backends import _cuda_chain as cc, _nvrtc

from strategies import chains, chain_dense, random_values

CHAINS = [
    db.PAPER_CHAINS["lenet_fc1_mono2"],
    "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "12 <-(3,2,2)- 8 <-(2,2,1)- 8",
    "12 <-(1,2,3)- 24 <-(2,3,1)- 36",
    "32 <-(32,16,1)- 16",                                   # one factor: global to global
    "64 <-(2,2,32)- 64 <-(16,16,2)- 64 <-(2,2,1)- 64",      # square factor too wide for R=8
]


def _case(text, rows, dtype=np.float64, cut=(0, 0), seed=0, stage=False):
    chain = db.Chain.parse(text) if isinstance(text, str) else text
    P, Q = chain.shape
    m, n = P - cut[0], Q - cut[1]
    rng = np.random.default_rng(seed)
    factors = [random_values(rng, sp.value_shape, dtype) for sp in chain]
    plan = cc.make_plan([sp.value_shape for sp in chain], n, m, rows, 64, np.dtype(dtype).name,
                        stage=stage)
    dense = chain_dense(chain, factors)[:m, :n]
    return chain, plan, factors, dense, rng


@pytest.mark.parametrize("stage", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("text", CHAINS)
def test_schedule_matches_dense_reference(text, rows, stage):
    chain, plan, factors, dense, rng = _case(text, rows, cut=(1, 2), stage=stage)
    X = rng.standard_normal((7, plan.n))
    Y = cc.emulate(plan, cc.kernel_values(factors), X)
    np.testing.assert_allclose(Y, X @ dense.T, rtol=1e-12, atol=1e-12)


@given(chains(max_factors=5), st.sampled_from([1, 2, 4, 8]), st.integers(1, 9),
       st.booleans(), st.booleans(), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_schedule_property(chain, rows, k, cut, stage, seed):
    P, Q = chain.shape
    chain, plan, factors, dense, rng = _case(
        chain, rows, np.complex128, cut=(int(cut and P > 1), int(cut and Q > 1)), seed=seed,
        stage=stage)
    X = random_values(rng, (k, plan.n), np.complex128)
    Y = cc.emulate(plan, cc.kernel_values(factors), X)
    scale = max(1.0, float(np.abs(X).max() * np.abs(dense).sum(axis=1).max()))
    np.testing.assert_allclose(Y, X @ dense.T, rtol=1e-12, atol=1e-12 * scale)


def test_buffers_in_place_and_chunks():
    vgg = db.Chain.parse(db.PAPER_CHAINS["vgg_512x4608_mono"])
    plan = cc.make_plan([sp.value_shape for sp in vgg], 4608, 512, 4, 256, "float32")
    # (8,9,1) -> buffer 0; three square (2,2,t) in place; (2,4,t) ping-pong; last global
    assert plan.out_buf == (0, 0, 0, 0, 1, 0, -1)
    assert plan.buf_size == (4096, 2048)
    assert plan.smem_bytes == 4 * (4096 + 2048) * 4
    bfly = db.Chain.butterfly(64)
    plan = cc.make_plan([sp.value_shape for sp in bfly], 64, 64, 8, 64, "bfloat16")
    assert set(plan.out_buf[:-1]) == {0} and plan.buf_size == (64, 0)
    assert plan.smem_bytes == 8 * 64 * 4  # float32 intermediates for 16-bit storage
    # a square factor whose outputs come in chunks is not done in place
    wide = cc.make_plan([(32, 2, 2, 1), (2, 16, 16, 2), (1, 2, 2, 32)], 64, 64, 8, 64,
                        "float32")
    assert wide.chunk(1) == 8 and wide.out_buf == (0, 1, -1)
    # fewer accumulators at 1024 threads per block (64 registers per thread at most)
    assert cc.make_plan(wide.specs, 64, 64, 8, 1024, "float32").chunk(1) == 4
    # staging the input widens buffer 1 to the input size (the first factor writes buffer 0)
    staged = cc.make_plan([sp.value_shape for sp in vgg], 4608, 512, 4, 256, "float32",
                          stage=True)
    assert staged.out_buf == (0, 0, 0, 0, 1, 0, -1) and staged.buf_size == (4096, 4608)


def test_source_bakes_the_sizes_in():
    vgg = db.Chain.parse(db.PAPER_CHAINS["vgg_512x4608_mono"])
    plan = cc.make_plan([sp.value_shape for sp in vgg], 4600, 500, 4, 256, "float16")
    src = cc.source(plan)
    assert "constexpr int R = 4, NT = 256, NIN = 4600, MOUT = 500;" in src
    assert "buf1[i * R + rr]" not in src  # not staged
    staged = cc.source(cc.make_plan(plan.specs, 4600, 500, 4, 256, "float16", stage=True))
    assert "buf1[i * R + rr] = (i < NIN ? h2f(X[xrow[rr] + i]) : C(0));" in staged
    assert "constexpr int RF = 8, SF = 9, T = 1, G = 512, RC = 8;" in src
    assert "xi + j * T < NIN" in src and "o < MOUT" in src  # padding and cut output
    assert "h2f(" in src and "f2h(" in src and "__syncthreads();" in src
    full = cc.source(cc.make_plan([sp.value_shape for sp in vgg], 4608, 512, 4, 256,
                                  "float32"))
    assert "< NIN" not in full and "< MOUT" not in full


@pytest.mark.parametrize("kwargs, match", [
    (dict(specs=[]), "at least one factor"),
    (dict(storage="int8"), "storage must be one of"),
    (dict(rows=0), "rows must be >= 1"),
    (dict(threads=100), "multiple of 32"),
    (dict(n=0), "0 < n <= 8"),
    (dict(m=9), "0 < m <= 8"),
])
def test_plan_errors(kwargs, match):
    args = dict(specs=[(4, 2, 2, 1)], n=8, m=8, rows=1, threads=64, storage="float32")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cc.make_plan(**args)


# ---------------------------------------------------------------------------------------
# NVRTC compile check (no GPU needed)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["float32", "float64", "float16", "bfloat16"])
def test_generated_source_compiles_with_nvrtc(storage):
    lib = _nvrtc.load()
    if lib is None:
        pytest.skip("NVRTC not installed (pip install nvidia-cuda-nvrtc-cu12)")
    for text in CHAINS[:2] + [db.PAPER_CHAINS["vgg_512x4608_mono"]]:
        chain = db.Chain.parse(text)
        P, Q = chain.shape
        for rows, stage in ((1, False), (8, False), (4, True)):
            plan = cc.make_plan([sp.value_shape for sp in chain], Q - 1, P - 1, rows, 256,
                                storage, stage=stage)
            ok, log, ptx = _nvrtc.compile_ptx(lib, cc.source(plan))
            assert ok and b".entry debutla_chain" in ptx, log


# ---------------------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------------------

def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no device")
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no usable CUDA device: {e}")
    return cp


TOL = {"float32": 2e-5, "float64": 1e-12, "complex64": 2e-5, "complex128": 1e-12,
       "float16": 4e-3, "bfloat16": 3e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("storage", list(TOL))
@pytest.mark.parametrize("text", CHAINS + [db.PAPER_CHAINS["vgg_512x4608_mono"]])
def test_kernel_matches_reference_on_gpu(text, storage):
    cp = _cupy()
    from debutla.backends import cupy_
    wide = {"float16": np.float32, "bfloat16": np.float32}.get(storage, np.dtype(storage))
    chain, plan0, factors, dense, rng = _case(text, 1, wide, cut=(1, 2))
    k = 37
    X = random_values(rng, (k, plan0.n), wide)
    if storage in ("float16", "bfloat16"):
        # quantise inputs and values first: the kernel's only other error is its output
        X, factors = _round(X, storage), [_round(V, storage) for V in factors]
        dense = chain_dense(chain, factors)[:plan0.m, :plan0.n]
    exact = np.result_type(X.dtype, np.float64)  # complex stays complex
    ref = X.astype(exact) @ dense.T.astype(exact)
    for rows, stage in ((1, False), (2, False), (4, False), (8, False), (4, True)):
        with db.config(cupy_rows=rows):
            plan = cupy_.choose_plan(plan0.specs, plan0.n, plan0.m, k, storage)
        if plan is None:
            continue
        if stage:
            plan = cc.make_plan(plan.specs, plan.n, plan.m, plan.rows, plan.threads, storage,
                                stage=True)
            if plan.smem_bytes > cupy_._device()[0]:
                continue
        Xd = cp.asarray(cc.to_storage(X, storage))
        Vd = cp.asarray(cc.to_storage(cc.kernel_values(factors), storage))
        Yd = cp.full((k, plan.m), np.nan, dtype=Xd.dtype)
        cupy_.launch(plan, Xd, Yd, Vd, k)
        Y = cc.from_storage(cp.asnumpy(Yd), storage)
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(Y, ref, rtol=TOL[storage], atol=TOL[storage] * scale,
                                   err_msg=f"rows={rows} stage={stage}")




def _round(a, storage):
    return cc.from_storage(cc.to_storage(a, storage), storage)


def test_storage_round_trip():
    a = np.array([1.0, -2.5, 1 + 2**-9, 3.0e38, np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(cc.from_storage(cc.to_storage(a, "float32"), "float32"), a)
    b = cc.from_storage(cc.to_storage(a, "bfloat16"), "bfloat16")
    np.testing.assert_array_equal(b[:2], a[:2])
    assert b[2] == 1.0  # 1 + 2**-9 is a tie below bfloat16's 8 bits: rounds to even
    assert np.isinf(b[4]) and np.isnan(b[5])
    h = cc.from_storage(cc.to_storage(a[:3], "float16"), "float16")
    np.testing.assert_array_equal(h, a[:3].astype(np.float16).astype(np.float32))
