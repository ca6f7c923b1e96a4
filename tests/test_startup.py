"""Start-up and exit of the command: what `train` imports, and the console entry's fast exit."""

from __future__ import annotations

import subprocess
import sys



def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}, check=False)


def test_scores_and_curves_need_no_scikit_learn(tmp_path):
    """The metrics and the report's curves are torchclf's own; scikit-learn (about 1 s to import) is not loaded."""
    done = _python("import sys\n"
                   "import numpy as np\n"
                   "from torchclf.metrics import compute_metrics\n"
                   "from torchclf.task import Task\n"
                   "y = np.array([0, 1, 1, 0, 1]); p = np.array([[.8, .2], [.3, .7], [.4, .6], [.6, .4], [.9, .1]])\n"
                   "m = compute_metrics(Task('binary', 2), y, p, ['a', 'b'])\n"
                   "print(round(m['accuracy'], 4), round(m['roc_auc'], 4), 'sklearn' in sys.modules)\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.8", "0.6667", "False"]  # ROC-AUC: 4 of the 6 positive-negative pairs in order


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


def test_training_from_a_file_at_the_command_line_imports_neither_scikit_learn_nor_scipy(tmp_path):
    """The split is torchclf's own (tests/test_split.py checks that it takes scikit-learn's rows), and so is the
    temperature search (tests/test_calibration.py compares it with scipy's)."""
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(200))
    (tmp_path / "t.csv").write_text("x,z,label\n" + rows + "\n")
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('imported:', 'sklearn' in sys.modules, 'scipy' in sys.modules))\n"
            "sys.argv = ['torchclf', 'train', 't.csv', '--target', 'label', '--epochs', '3', '--quiet',"
            " '--out', 'run']\n"
            "from torchclf.cli import run\n"
            "run()\n")
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: False False"
    assert (tmp_path / "run" / "model.safetensors").exists()
