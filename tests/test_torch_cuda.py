"""DeBut layers on CUDA tensors: the chain kernel through CuPy (impl "cuda").

Skipped without a CUDA build of torch, CuPy and a GPU; on CPU-only machines only the
error paths run.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla.torch import DeButLinear, debut_mm  # noqa: E402
from debutla.torch import _ops  # noqa: E402

PADDED = "12 <-(1,2,3)- 24 <-(2,3,1)- 36"          # layer 11 x 30: padded both sides
BULGE = "16 <-(2,4,4)- 32 <-(4,2,2)- 16 <-(2,2,1)- 16"
CHAINS = [PADDED, BULGE, db.PAPER_CHAINS["lenet_fc1_mono2"]]


def test_impl_cuda_refuses_cpu_tensors():
    x = torch.randn(2, 30)
    values = [torch.randn(sp.value_shape) for sp in db.Chain.parse(PADDED)]
    with pytest.raises(TypeError, match="impl='cuda' needs CUDA tensors"):
        debut_mm(x, values, PADDED, (11, 30), "cuda")


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    if _ops._cupy_backend() is None:
        pytest.skip("CuPy with a usable GPU is not installed")
    return torch.device("cuda")


def _pair(chain, m, n, dtype=torch.float32, bias=True):
    dev = _cuda()
    torch.manual_seed(0)
    cpu = DeButLinear(n, m, chain=chain, bias=bias, dtype=dtype)
    gpu = DeButLinear(n, m, chain=chain, bias=bias, dtype=dtype, device=dev)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu, dev


@pytest.mark.gpu
@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_layer_matches_cpu_layer(chain, dtype):
    P, Q = db.Chain.parse(chain).shape
    m, n = P - 1, Q - (2 if Q > 2 else 0)
    cpu, gpu, dev = _pair(chain, m, n, dtype)
    assert _ops._use_cuda(torch.ones(1, device=dev, dtype=dtype), "auto")
    x = torch.randn(5, 3, n, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.to(dev)).cpu(), cpu(x), rtol=tol, atol=tol)
    # training step: forward on the kernel, gradients agree with the CPU layer's
    xc = x.clone().requires_grad_(True)
    xg = x.to(dev).requires_grad_(True)
    cpu(xc).square().sum().backward()
    gpu(xg).square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=10 * tol, atol=10 * tol)
    for a, b in zip(gpu.parameters(), cpu.parameters()):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=10 * tol, atol=10 * tol)


@pytest.mark.gpu
@pytest.mark.parametrize("chain", [PADDED, BULGE])
def test_cuda_gradcheck_float64(chain):
    dev = _cuda()
    c = db.Chain.parse(chain)
    m, n = c.shape[0] - 1, c.shape[1] - 2
    g = torch.Generator().manual_seed(1)
    values = [torch.randn(sp.value_shape, dtype=torch.float64, generator=g).to(dev)
              .requires_grad_(True) for sp in c]
    x = torch.randn(3, n, dtype=torch.float64, generator=g).to(dev).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, *v: debut_mm(x, list(v), chain, (m, n), "cuda"), (x, *values))
    # frozen values: the input gradient is one adjoint product on the kernel
    frozen = [v.detach() for v in values]
    assert torch.autograd.gradcheck(lambda x: debut_mm(x, frozen, chain, (m, n), "cuda"),
                                    (x,))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_cuda_half_storage_against_float32(dtype, tol):
    chain = db.PAPER_CHAINS["vgg_512x4608_mono"]
    cpu, gpu32, dev = _pair(chain, 512, 4608, torch.float32)
    half = DeButLinear(4608, 512, chain=chain, device=dev, dtype=dtype)
    half.load_state_dict(gpu32.state_dict())  # values rounded to 16 bits
    ref = DeButLinear(4608, 512, chain=chain, device=dev, dtype=torch.float32)
    ref.load_state_dict({k: v.float() if torch.is_tensor(v) else v  # the chain: extra state
                         for k, v in half.state_dict().items()})
    x = torch.randn(64, 4608, device=dev).to(dtype)
    with torch.no_grad():
        y = half(x)
        y_ref = ref(x.float())  # same rounded inputs and values, float32 everywhere
    assert y.dtype == dtype
    scale = float(y_ref.abs().max())
    err = float((y.float() - y_ref).abs().max()) / scale
    assert err < tol, err

