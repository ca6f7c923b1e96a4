"""Start-up and exit of the command: what `train` imports, and the console entry's fast exit."""

from __future__ import annotations

import subprocess
import sys



def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}, check=False)


def test_the_console_entry_runs_exit_handlers_then_leaves_with_the_status(tmp_path):
    """Both exits run the handlers; neither listing the datasets nor a mistyped file name imports torch (the
    name is checked first: 0.6 s to the error instead of 1.9)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('handlers ran; torch imported:', 'torch' in sys.modules, flush=True))\n"
            "sys.argv = ['torchclf'] + sys.argv[1:]\n"
            "from torchclf.cli import run\n"
            "run()\n"
            "print('never reached')\n")
    ok = subprocess.run([sys.executable, "-c", code, "datasets"], capture_output=True, text=True, timeout=120,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert "circles" in ok.stdout and ok.stdout.rstrip().endswith("handlers ran; torch imported: False")
    assert "never reached" not in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "train", str(tmp_path / "absent.csv")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stdout.rstrip() == "handlers ran; torch imported: False"
    assert bad.stderr == f"error: {tmp_path / 'absent.csv'}: no such file (check the path)\n"


def test_the_demo_and_a_file_train_in_a_real_process_that_imports_neither_scikit_learn_nor_scipy(tmp_path):
    """`train` on a CSV file, then `python -m torchclf train` (the README's demo, on the built-in circles), in one
    fresh process: both write a complete run folder, the demo shows its progress and its metrics, and neither
    loads scikit-learn or SciPy (about 2 s to import).

    The generators, the split, the metrics and the report's curves are torchclf's own (tests/test_data.py,
    tests/test_split.py and tests/test_metrics.py compare them with scikit-learn's), and so is the temperature
    search (tests/test_calibration.py compares it with SciPy's). The command's error exit in a real process
    (status 2, one line) is the console-entry test above.
    """
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(200))
    (tmp_path / "t.csv").write_text("x,z,label\n" + rows + "\n")
    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print('imported:', 'sklearn' in sys.modules, 'scipy' in sys.modules))\n"
            "from torchclf.cli import main\n"
            "assert main(['train', 't.csv', '--target', 'label', '--epochs', '3', '--quiet', '--out', 'run']) == 0\n"
            "sys.argv = ['torchclf', 'train', '--out', 'demo', '--epochs', '5', '--threads', '1']\n"
            "runpy.run_module('torchclf', run_name='__main__', alter_sys=True)  # as `python -m torchclf` does\n")
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: False False"
    assert "Epoch    5 |" in done.stderr and "circles: binary, 5 epochs" in done.stdout and "run folder: demo\n" in done.stdout
    assert (tmp_path / "demo" / "plots" / "decision_boundary.png").exists()
    for run in ("demo", "run"):
        page = (tmp_path / run / "report.html").read_text()
        assert 'alt="ROC and PR curves"' in page and 'alt="reliability diagram"' in page, run
