"""debutla.torch.warmup: compile what a model's DeBut layers will run, with no side effect."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla.backends import _numba_native as nat  # noqa: E402
from debutla.backends import numba_ as nbk  # noqa: E402
from debutla.torch import DeButConv2d, DeButLinear, _kernels, _ops, warmup  # noqa: E402
from debutla.torch._openmp import torch_team  # noqa: E402

# padded (served as 11 x 29) and bulging, as in test_native / test_torch_backward
CHAIN = "12 <-(1,2,12)- 24 <-(2,3,4)- 36 <-(6,5,1)- 30"


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(DeButLinear(29, 11, chain=CHAIN), torch.nn.BatchNorm1d(11),
                               torch.nn.Dropout(0.5), torch.nn.ReLU(),
                               DeButLinear(11, 5))


def _state_of(model):
    return ({k: v.clone() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)},
            [p.grad for p in model.parameters()], model.training,
            [m.training for m in model.modules()])


def test_warmup_leaves_parameters_buffers_gradients_and_modes_as_they_were():
    model = _model()
    before = _state_of(model)
    x = torch.randn(300, 29, requires_grad=True)
    assert warmup(model, x) >= 0
    after = _state_of(model)
    for k, v in before[0].items():  # batch-norm statistics included
        assert torch.equal(v, after[0][k]), k
    assert all(g is None for g in after[1]) and x.grad is None
    assert after[2:] == before[2:]
    model.eval()
    warmup(model, x, train=False)
    assert not model.training and not any(m.training for m in model.modules())
    model.train()
    model[1].eval()  # a frozen batch norm inside a training model stays frozen
    warmup(model, x)
    assert model.training and not model[1].training and model[0].training


def test_warmup_compiles_the_backward_and_team_bodies_a_training_call_uses(monkeypatch):
    """The generated backward (forced for this small chain, used by no other test: not
    compiled before) is ready after warmup, though background compiles are on, and so
    are the team bodies where they run."""
    for name in ("BACKWARD_MIN_NNZ", "CODEGEN_MIN_NNZ", "CODEGEN_MIN_WORK"):
        monkeypatch.setattr(nbk, name, 0)
    monkeypatch.setattr(_kernels, "GROUP_MIN_WORK", 1)
    dt = np.float64
    chain = "16 <-(2,2,8)- 16 <-(4,2,2)- 8 <-(2,3,1)- 12"
    layer = DeButLinear(11, 15, chain=chain, dtype=torch.float64)
    x = torch.randn(300, 11, dtype=torch.float64)
    op = _ops._live_operator(layer._values(), layer.chain, (15, 11))
    state = op._state(_ops._NUMBA, np.dtype(dt))
    assert nbk.BACKWARD not in state.ready
    with db.config(threads=2, background=True):
        warmup(layer, x)
        assert nbk.BACKWARD in state.ready
        if torch_team() is not None:
            assert nat.body(dt) is not None
            assert nat.body(dt, count=len(layer.chain)) is not None


def test_warmup_takes_any_output_structure_and_conv_layers():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = DeButConv2d(3, 4, 3, padding=1)
            self.fc = DeButLinear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return {"map": y, "pair": (self.fc(y.mean((2, 3))), y.argmax(1))}
    model = Two()
    assert warmup(model, torch.randn(2, 3, 5, 5)) >= 0
    assert all(p.grad is None for p in model.parameters())


def test_warmup_of_a_model_without_debut_layers_runs_nothing():
    calls = []

    class Plain(torch.nn.Module):
        def forward(self, x):
            calls.append(x)
            return x
    assert warmup(Plain(), torch.zeros(3)) == 0.0 and calls == []


def test_warmup_names_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match="warmup: model must be a torch.nn.Module"):
        warmup(lambda x: x, torch.zeros(3))
