"""Start-up and exit of the command: what `train` imports, and the console entry's fast exit."""

from __future__ import annotations

import subprocess
import sys



def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}, check=False)


def test_the_console_entry_runs_exit_handlers_then_leaves_with_the_status(tmp_path):
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('handlers ran', flush=True))\n"
            "sys.argv = ['torchclf'] + sys.argv[1:]\n"
            "from torchclf.cli import run\n"
            "run()\n"
            "print('never reached')\n")
    ok = subprocess.run([sys.executable, "-c", code, "datasets"], capture_output=True, text=True, timeout=120,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert "circles" in ok.stdout and ok.stdout.rstrip().endswith("handlers ran")
    assert "never reached" not in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "train", str(tmp_path / "absent.csv")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stdout.rstrip() == "handlers ran"
    assert bad.stderr == f"error: {tmp_path / 'absent.csv'}: no such file (check the path)\n"


def test_training_on_the_demo_data_or_a_file_imports_neither_scikit_learn_nor_scipy(tmp_path):
    """scikit-learn and SciPy (about 2 s to import) are not loaded by a run on the built-in circles or on a file.

    The generators, the split, the metrics and the report's curves are torchclf's own (tests/test_data.py,
    tests/test_split.py and tests/test_metrics.py compare them with scikit-learn's), and so is the temperature
    search (tests/test_calibration.py compares it with SciPy's). Both runs write their folder, report included.
    """
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(200))
    (tmp_path / "t.csv").write_text("x,z,label\n" + rows + "\n")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('imported:', 'sklearn' in sys.modules, 'scipy' in sys.modules))\n"
            "from torchclf.cli import main, run\n"
            "assert main(['train', '--epochs', '2', '--quiet', '--out', 'demo']) == 0\n"
            "sys.argv = ['torchclf', 'train', 't.csv', '--target', 'label', '--epochs', '3', '--quiet',"
            " '--out', 'run']\n"
            "run()\n")
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: False False"
    for run in ("demo", "run"):
        page = (tmp_path / run / "report.html").read_text()
        assert 'alt="ROC and PR curves"' in page and 'alt="reliability diagram"' in page, run
