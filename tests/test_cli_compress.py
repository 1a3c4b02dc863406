"""``debutla compress``: a saved PyTorch model in, the model with DeBut layers out."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import debutla as db  # noqa: E402
from debutla import cli  # noqa: E402
from debutla.cli.compress import parse_layer  # noqa: E402
from debutla.cli import CLIError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NET = (pathlib.Path(__file__).parent / "compress_net.py").read_text()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the model's code, a saved model, its state dict and inputs."""
    (tmp_path / "cli_compress_net.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import cli_compress_net

    torch.manual_seed(0)
    net = cli_compress_net.Net()
    torch.save(net, tmp_path / "model.pt")
    torch.save(net.state_dict(), tmp_path / "state.pt")
    x = torch.randn(300, 1, 14, 14)
    torch.save(x, tmp_path / "x.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    return tmp_path


def here(capsys, *args: str):
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parse_layer():
    assert parse_layer("fc1") == ("fc1", "auto")
    assert parse_layer("fc1=auto") == ("fc1", "auto")
    assert parse_layer("a.b=ratio:0.25") == ("a.b", {"ratio": 0.25})
    assert parse_layer("fc=params:1_000") == ("fc", {"max_params": 1000})
    assert parse_layer("fc=error:0.3") == ("fc", {"rel_error": 0.3})
    assert parse_layer("fc=lenet_fc2") == ("fc", db.Chain.parse(db.PAPER_CHAINS["lenet_fc2"]))
    assert parse_layer("fc = 8 <-(2,2,4)- 8 <-(4,8,1)- 16")[1].shape == (8, 16)
    for bad, msg in (("=auto", "name is empty"), ("fc=params:1.5", "params needs an integer"),
                     ("fc=ratio:x", "ratio needs a number"), ("fc=ratoi:1", "invalid chain")):
        with pytest.raises(CLIError, match=msg):
            parse_layer(bad)


def test_compress_end_to_end_in_a_fresh_process(workdir):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "debutla", "compress", "model.pt", "--unsafe-pickle",
         "-o", "small.pt", "-l", "fc=ratio:0.1", "-l", "conv2=error:0.9", "-l", "head.1",
         "--max-params", "600", "--calibration", "x.pt", "--report", "r.json",
         "--method", "hierarchical"],
        capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MC " in proc.stdout and "out err" in proc.stdout and "saved  small.pt" in proc.stdout
    rep = json.loads((workdir / "r.json").read_text())
    by = {r["name"]: r for r in rep["layers"]}
    assert by["fc"]["nnz"] <= 0.1 * 64 * 288 and by["head.1"]["nnz"] <= 600
    assert all(r["data_rel_error"] is not None for r in rep["layers"])
    small = torch.load(workdir / "small.pt", weights_only=False)
    from debutla.torch import DeButConv2d, DeButLinear, count_parameters

    assert isinstance(small.fc, DeButLinear) and isinstance(small.conv2, DeButConv2d)
    assert isinstance(small.conv1, torch.nn.Conv2d)
    assert count_parameters(small) == rep["params_after"] < rep["params_before"]
    assert small(torch.randn(2, 1, 14, 14)).shape == (2, 10)


def test_compress_in_process_and_npy_calibration(workdir, capsys):
    code, out, err = here(capsys, "compress", "model.pt", "--unsafe-pickle", "-o", "s.pt",
                          "-l", "fc=params:2000", "--calibration", "x.npy",
                          "--calibration-rows", "100", "--method", "als",
                          "--seed", "1")
    assert code == 0, err
    assert "rel_error=" in err  # the fit's progress bar (tqdm or the plain fallback)
    small = torch.load(workdir / "s.pt", weights_only=False)
    assert small.fc.nnz <= 2000
    # 100 rows for 288 inputs: the fit warns, on one line naming the layer
    assert "debutla compress: warning: compress: layer 'fc': calibration gives 100 rows " \
           "for 288 inputs" in err


def test_state_dict_output_loads_without_pickle(workdir, capsys):
    code, out, err = here(capsys, "compress", "model.pt", "--unsafe-pickle", "-o", "s.pt",
                          "-l", "fc=params:1500", "--method", "hierarchical",
                          "--state-dict", "-q")
    assert code == 0, err
    assert "load_compressed" in out and err == ""  # -q: no progress bar
    import cli_compress_net
    from debutla.torch import DeButLinear, load_compressed

    sd = torch.load(workdir / "s.pt")  # weights_only: no pickle needed
    net = load_compressed(cli_compress_net.Net(), sd)
    assert isinstance(net.fc, DeButLinear) and net.fc.nnz <= 1500


def test_list_shows_layers_and_auto_chains(workdir, capsys):
    code, out, err = here(capsys, "compress", "model.pt", "--unsafe-pickle", "--list")
    assert code == 0, err
    assert "conv2" in out and "64x288" in out and "18,496" in out
    assert str(db.design_chain(64, 288)) in out
    assert "21,242 trainable parameters" in out


def test_tradeoff_prints_the_table(workdir, capsys):
    code, out, err = here(capsys, "compress", "model.pt", "--unsafe-pickle", "--tradeoff",
                          "-l", "fc", "-l", "conv2", "--ratios", "0.1,0.5",
                          "--calibration", "x.pt", "--method", "hierarchical")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "SVD out" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["fc", "fc", "conv2"]
    assert not (workdir / "s.pt").exists()


@pytest.mark.parametrize("args, needle", [
    (["model.pt", "-o", "s.pt", "-l", "fc"], "--unsafe-pickle if you trust it"),
    (["state.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc"], "a state dict"),
    (["nope.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc"], "no such file"),
    (["x.npy", "--unsafe-pickle", "-o", "s.pt", "-l", "fc"], "not a file torch.load"),
    (["model.pt", "--unsafe-pickle", "-l", "fc"], "-o OUT.pt is required"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt"], "name at least one layer"),
    (["model.pt", "--unsafe-pickle", "-o", "no/dir/s.pt", "-l", "fc"], "does not exist"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc", "-l", "fc=auto"],
     "named twice"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fcx"], "'fcx' is not a submodule"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "head"], "only nn.Linear"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc=params:3"],
     "layer 'fc': max_params: no chain"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc", "--calibration", "n.pt"],
     "--calibration n.pt: no such file"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc", "--calibration",
      "state.pt"], "--calibration state.pt: holds an object of type"),
    (["model.pt", "--unsafe-pickle", "-o", "s.pt", "-l", "fc", "--ratio", "2"],
     "expected a number in (0, 1)"),
    (["model.pt", "--unsafe-pickle", "--tradeoff"], "--tradeoff needs the layers"),
    (["model.pt", "--unsafe-pickle", "--tradeoff", "-l", "fc", "--method", "random"],
     "--method random fits nothing"),
    (["model.pt", "--unsafe-pickle", "--tradeoff", "-l", "fc", "--ratios", "0.1,x"],
     "expected numbers in (0, 1]"),
    (["model.pt", "--unsafe-pickle", "--tradeoff", "-l", "conv2", "--ratios", "0.01"],
     "every ratio in [0.01] is below the smallest chain"),
])
def test_bad_input_is_one_line_exit_2(workdir, capsys, args, needle):
    code, out, err = here(capsys, "compress", *args)
    assert code == 2, out + err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (workdir / "s.pt").exists()


def test_model_code_missing_is_explained(workdir, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "cli_compress_net")
    (workdir / "cli_compress_net.py").unlink()
    code, out, err = here(capsys, "compress", "model.pt", "--unsafe-pickle", "--list")
    assert code == 2 and "the model's code cannot be imported" in err
