"""The ``debutla`` command: subprocess runs of this checkout, in-process runs for the
paths that need patching, and the shared timing helper (``debutla._timing``)."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import debutla as db
from debutla import _timing, cli
from procs import run_python

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = "16 <-(4,4,4)- 16 <-(4,4,1)- 16"


def run(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m debutla ARGS`` on this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "debutla", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_here(capsys):
    """``debutla ARGS`` in this process (fast; for the many error paths)."""

    def go(*args: str) -> _Result:
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)

    return go


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((48, 80))
    np.save(d / "w.npy", W)
    np.savez(d / "ws.npz", a=W, b=np.ones(3), c=np.ones((2, 3, 4)), s=np.array([["x", "y"]]))
    np.savez(d / "one.npz", only=W[:16, :16])
    (d / "bad.npz").write_bytes(b"not a zip file at all")
    (d / "w.txt").write_text("1 2 3")
    return d, W


# ---------------------------------------------------------------------------------------
# subprocess runs
# ---------------------------------------------------------------------------------------

def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"debutla {db.__version__} (numpy")


def test_bad_input_in_a_subprocess_is_one_line(files, tmp_path):
    d, _ = files
    assert_one_line_error(run("factorize", str(d / "ws.npz:zz"), "-o", str(tmp_path / "o")),
                          "no array named 'zz'")
    assert_one_line_error(run("design", "8", "x"), "expected a positive integer")


def test_no_command_prints_help_and_exits_2():
    proc = run()
    assert proc.returncode == 2
    assert "factorize" in proc.stderr and "design" in proc.stderr


def test_installed_console_script():
    exe = shutil.which("debutla")
    if exe is None:
        pytest.skip("the debutla console script is not installed on PATH")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("debutla ")


def test_factorize_npy_summary_and_file(files, tmp_path):
    d, W = files
    out = tmp_path / "fit.npz"
    proc = run("factorize", str(d / "w.npy"), "-o", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for key in ("input", "chain", "parameters", "rel. error", "SVD error", "time", "saved"):
        assert any(line.startswith(key) for line in text.splitlines()), (key, text)
    op = db.load(out)
    assert op.shape == W.shape
    rel = np.linalg.norm(W - op.to_dense()) / np.linalg.norm(W)
    printed = float(text.split("rel. error")[1].split()[0])
    assert printed == pytest.approx(rel, rel=1e-3)
    assert f"of {W.size:,}" in text
    assert "factorize[" in proc.stderr  # the progress bar


def test_factorize_npz_key_explicit_chain_quiet(files, tmp_path):
    d, W = files
    chain = db.design_chain(48, 80, n_factors=2)
    out = tmp_path / "fit.npz"
    proc = run("factorize", f"{d / 'ws.npz'}:a", "--chain", str(chain), "--method",
               "hierarchical", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert db.load(out).chain == chain
    assert "method hierarchical" in proc.stdout


def test_factorize_safetensors(files, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    d, W = files
    path = tmp_path / "m.safetensors"
    st.save_file({"layer.0.weight": W.astype(np.float32), "bias": np.ones(3, np.float32)},
                 str(path))
    out = tmp_path / "fit.npz"
    proc = run("factorize", f"{path}:layer.0.weight", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "48x80 float32" in proc.stdout
    assert db.load(out).shape == (48, 80)
    proc = run("factorize", f"{path}:nope", "-o", str(out))
    assert_one_line_error(proc, "no array named 'nope'")
    proc = run("info", str(path))
    assert proc.returncode == 0 and "layer.0.weight" in proc.stdout and "48x80" in proc.stdout


@pytest.mark.parametrize("spec, needle", [
    ("missing.npy", "no such file"),
    ("ws.npz", "holds 4 arrays"),
    ("ws.npz:zz", "no array named 'zz'"),
    ("ws.npz:b", "expected a 2-D matrix, got shape (3,)"),
    ("ws.npz:c", "reshape it to 2-D"),
    ("ws.npz:s", "expected a numeric matrix"),
    ("w.npy:k", "a .npy file holds one array"),
    ("bad.npz", "cannot read the file"),
    ("w.txt", "unsupported file type; expected .npy, .npz or .safetensors"),
    ("nothing.txt", "expected a .npy, .npz or .safetensors file"),
])
def test_factorize_bad_input(run_here, files, tmp_path, spec, needle):
    d, _ = files
    proc = run_here("factorize", str(d / spec), "-o", str(tmp_path / "o.npz"))
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize("chain, needle", [
    ("16 <-(2,8,1- 128", "invalid chain"),
    ("16 <-(2,8,1)- 128", "block counts differ"),
    (SMALL, "cannot serve W of shape (48, 80)"),
])
def test_factorize_bad_chain(run_here, files, tmp_path, chain, needle):
    d, _ = files
    proc = run_here("factorize", str(d / "w.npy"), "--chain", chain, "-o", str(tmp_path / "o.npz"))
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize("args, needle", [
    (["--max-params", "10", "--rel-error", "0.1"], "not allowed with argument"),
    (["--rel-error", "1.5"], "expected a number in (0, 1)"),
    (["--max-params", "0"], "expected a positive integer"),
    (["--method", "svd"], "invalid choice"),
    ([], "the following arguments are required: -o"),
])
def test_factorize_bad_options(run_here, files, args, needle):
    d, _ = files
    proc = run_here("factorize", str(d / "w.npy"), *args)
    assert_one_line_error(proc, needle)


def test_factorize_missing_output_folder(files, tmp_path):
    d, _ = files
    proc = run("factorize", str(d / "w.npy"), "-o", str(tmp_path / "no" / "o.npz"))
    assert_one_line_error(proc, "does not exist")


def test_factorize_plot(files, tmp_path):
    pytest.importorskip("matplotlib")
    d, _ = files
    png = tmp_path / "fit.png"
    proc = run("factorize", str(d / "one.npz"), "-q", "-o", str(tmp_path / "o.npz"),
               "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"picture     {png}" in proc.stdout


def test_info_operator_file_chain_and_arrays(files, tmp_path):
    d, _ = files
    op = db.DeBut.random(SMALL, seed=0, dtype=np.float32)
    db.save(op, tmp_path / "op.npz")
    proc = run("info", str(tmp_path / "op.npz"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "DeBut operator" in out and SMALL in out and "float32" in out
    assert f"parameters   {op.nnz:,}" in out and "compression" in out
    proc = run("info", SMALL)
    assert proc.returncode == 0 and "compression" in proc.stdout
    proc = run("info", str(d / "ws.npz"))
    assert proc.returncode == 0
    assert "not a debutla operator file" in proc.stdout and "2x3x4" in proc.stdout
    proc = run("info", str(d / "w.npy"))
    assert proc.returncode == 0 and "48x80 float64" in proc.stdout
    proc = run("info", f"{d / 'ws.npz'}:a")
    assert proc.returncode == 0 and "48x80" in proc.stdout


@pytest.mark.parametrize("target, needle", [
    ("missing.npz", "no such file"),
    ("16 <-(2,2)- 16", "invalid chain"),
    ("bad.npz", "cannot read the file"),
])
def test_info_errors(run_here, files, target, needle):
    d, _ = files
    arg = str(d / target) if target.endswith(".npz") else target
    assert_one_line_error(run_here("info", arg), needle)


def test_design_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "d.png"
    proc = run("design", "512", "4608", "--factors", "2-5", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if "<-(" in ln]
    assert len(rows) == 4
    for k, row in zip(range(2, 6), rows):
        c = db.design_chain(512, 4608, n_factors=k)
        assert str(c) in row and f"{c.nnz:,}" in row
    marked = [r for r in rows if r.startswith("*")]
    assert len(marked) == 1 and str(db.design_chain(512, 4608, n_factors=5)) in marked[0]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_design_max_params_marks_largest_within_budget():
    proc = run("design", "512", "4608", "--factors", "2-5", "--max-params", "20000")
    assert proc.returncode == 0
    marked = [r for r in proc.stdout.splitlines() if r.startswith("*") and "<-(" in r]
    assert str(db.design_chain(512, 4608, n_factors=4)) in marked[0]
    proc = run("design", "512", "4608", "--max-params", "100")
    assert proc.returncode == 1
    assert "no candidate has at most 100 parameters" in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["5", "x"], "expected a positive integer"),
    (["5", "0"], "expected a positive integer"),
    (["8", "8", "--factors", "3-2"], "expected 1 <= K1 <= K2"),
    (["8", "8", "--kind", "round"], "invalid choice"),
    (["1", "7", "--kind", "bulging", "--factors", "1"], "no bulging chain"),
])
def test_design_errors(run_here, args, needle):
    assert_one_line_error(run_here("design", *args), needle)


def test_bench_small_chain_threads():
    proc = run("bench", "--chain", SMALL, "--batch", "1,8", "--threads", "1",
               "--repeats", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "threads:" in out and "Numba 1" in out
    assert "median" in out and "spread" in out and "speed-up" in out
    assert len([ln for ln in out.splitlines() if ln.strip().startswith(("1 ", "8 "))]) == 2


@pytest.mark.parametrize("args, needle", [
    (["--batch", "0"], "expected positive integers"),
    (["--repeats", "2"], "--repeats must be at least 3"),
    (["--threads", "100000"], "Numba was started with at most"),
    (["--chain", "4 <-(2,2)- 4"], "invalid chain"),
    (["--dtype", "int8"], "invalid choice"),
])
def test_bench_errors(run_here, args, needle):
    assert_one_line_error(run_here("bench", *args), needle)


def test_demo_runs():
    proc = run("demo", "--no-fit", "--repeats", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "check:" in out and "(ok, float32)" in out
    assert "threads:" in out and "spread" in out and "interleaved" in out


# ---------------------------------------------------------------------------------------
# in-process runs (patched library)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, val, key, want", [
    ("--max-params", "2,000", "max_params", 2000),
    ("--rel-error", "0.25", "rel_error", 0.25),
])
def test_budget_flags_forwarded(files, tmp_path, monkeypatch, capsys, flag, val, key, want):
    d, W = files
    real = db.factorize
    seen = {}

    def fake(W, chain="auto", method="auto", *, max_params=None, rel_error=None, **kw):
        seen.update(max_params=max_params, rel_error=rel_error, chain=chain, **kw)
        return real(W, db.design_chain(*W.shape, n_factors=2), method, **kw)

    monkeypatch.setattr(db, "factorize", fake)
    code = cli.main(["factorize", str(d / "w.npy"), flag, val, "-q", "-o",
                     str(tmp_path / "o.npz")])
    assert code == 0, capsys.readouterr().err
    assert seen[key] == want and seen["chain"] == "auto" and seen["progress"] is False
    assert "rel. error" in capsys.readouterr().out


def test_safetensors_not_installed(files, tmp_path, monkeypatch, capsys):
    d, W = files
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    code = cli.main(["factorize", f"{path}:w", "-o", str(tmp_path / "o.npz")])
    assert code == 2
    assert "needs the safetensors package: pip install safetensors" in capsys.readouterr().err


def test_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code = cli.main(["design", "16", "16", "--plot", str(tmp_path / "d.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert 'pip install "debutla[plot]"' in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_exception(files):
    d, _ = files
    with pytest.raises(cli.CLIError, match="no such file"):
        cli.main(["--debug", "info", str(d / "missing.npz")])


def test_library_info_logs_reach_stderr(capsys):
    assert cli.main(["info", SMALL]) == 0
    logging.getLogger("debutla.backends").info("compiling kernels (one time, 3 s)")
    err = capsys.readouterr().err
    assert "debutla: compiling kernels (one time, 3 s)" in err
    logging.getLogger("debutla.backends").debug("hidden detail")
    assert "hidden" not in capsys.readouterr().err
    cli.main(["info", SMALL])  # a second run adds no second handler
    logging.getLogger("debutla").info("once")
    assert capsys.readouterr().err.count("once") == 1
    # the library's own messages carry the prefix already: not twice
    logging.getLogger("debutla").warning("debutla: compiled the kernel in 3.0 s")
    assert capsys.readouterr().err == "debutla: compiled the kernel in 3.0 s\n"


def test_run_bench_times_the_numba_kernels_from_the_first_round():
    """In a fresh process the first products run on the NumPy backend while Numba
    loads (about 1 s): the benchmark waits for the kernels before it times anything."""
    code = f"""
        from debutla import _timing, backends, cli
        seen = []
        compare = _timing.compare

        def spy(fns, **kw):
            seen.append(backends._numba_ready.is_set())
            return compare(fns, **kw)

        _timing.compare = spy
        cli.run_bench({SMALL!r}, [1, 2], repeats=3, min_time=1e-3, out=lambda s: None)
        print(seen)
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[True,", "True]"]


def test_run_bench_returns_rows():
    lines = []
    rows = cli.run_bench(SMALL, [2], repeats=3, min_time=1e-3, out=lines.append)
    assert rows[0]["batch"] == 2 and rows[0]["speedup"] == pytest.approx(
        rows[0]["dense"].median / rows[0]["debut"].median)
    assert any(line.startswith("threads:") for line in lines)


# ---------------------------------------------------------------------------------------
# the timing helper
# ---------------------------------------------------------------------------------------

def test_compare_interleaves_and_rotates():
    calls = []
    res = _timing.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          repeats=4, min_time=1e-9, warmup=0)
    assert [t.number for t in res.values()] == [1, 1]
    timed = calls[-8:]  # after calibration: one call of each per round
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(t.times) == 4 for t in res.values())


def test_compare_calibrates_number_and_warms_up():
    count = {"n": 0}

    def f():
        count["n"] += 1

    res = _timing.compare({"f": f}, repeats=3, min_time=2e-3, warmup=5)
    t = res["f"]
    assert t.number > 1
    assert count["n"] >= 5 + 3 * t.number
    assert t.min <= t.q1 <= t.median <= t.q3 <= t.max


@pytest.mark.parametrize("kw, exc, needle", [
    ({"fns": {}}, TypeError, "non-empty mapping"),
    ({"fns": [lambda: 0]}, TypeError, "non-empty mapping"),
    ({"fns": {"x": 3}}, TypeError, "fns['x'] must be callable"),
    ({"fns": {"x": int}, "repeats": 2}, ValueError, "repeats must be an integer >= 3"),
    ({"fns": {"x": int}, "min_time": 0}, ValueError, "min_time must be > 0"),
    ({"fns": {"x": int}, "warmup": -1}, ValueError, "warmup must be an integer >= 0"),
])
def test_compare_errors(kw, exc, needle):
    with pytest.raises(exc, match=needle.replace("[", r"\[").replace("]", r"\]")):
        _timing.compare(**kw)


def test_spread_and_busy_warning():
    steady = _timing.Timing("dense", (1.0, 1.01, 0.99, 1.02, 0.98))
    noisy = _timing.Timing("DeBut", (1.0, 2.0, 1.0, 3.0, 1.5))
    assert not steady.busy and noisy.busy
    assert _timing.busy_warning({"d": steady}) is None
    w = _timing.busy_warning([steady, noisy])
    assert w.startswith("warning: the machine looks busy") and "'DeBut'" in w
    assert f"{noisy.spread:.0%}" in w
    assert _timing.busy_warning([steady], threshold=0.001) is not None
    with pytest.raises(ValueError, match="threshold"):
        _timing.busy_warning([steady], threshold=-1)
    assert _timing.Timing("z", (0.0, 0.0, 0.0)).spread == 0.0


def test_thread_info_with_and_without_threadpoolctl(monkeypatch):
    info = _timing.thread_info()
    assert info["cpus"] >= 1 and info["numba"] >= 1
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    info = _timing.thread_info()
    assert info["blas"] is None
    assert "BLAS unknown (pip install threadpoolctl)" in _timing.describe_threads(info)
    assert _timing.describe_threads({"cpus": 2, "numba": 2, "blas": []}).endswith(
        "BLAS none found")


def test_format_seconds():
    assert _timing.format_seconds(12.0) == "12 s"
    assert _timing.format_seconds(2e-5) == "20 us"
    assert _timing.format_seconds(1e-10) == "0.1 ns"


def test_short_labels_for_picture_titles():
    assert cli._short("/a/b/model.safetensors:layer.0.weight") == \
        "model.safetensors:layer.0.weight"
    long = "/x/" + "m" * 40 + ".safetensors:" + "k" * 40
    short = cli._short(long)
    assert len(short) <= 60 and "..." in short and short.endswith("k" * 20)


def test_factorize_with_a_real_budget(files, tmp_path):
    """End to end: the budget reaches the real search and the summary reports it."""
    d, W = files
    out = tmp_path / "b.npz"
    proc = run("factorize", str(d / "w.npy"), "--max-params", "1500", "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    op = db.load(out)
    assert op.chain.nnz <= 1500 and op.shape == W.shape
    assert "SVD error" in proc.stdout
