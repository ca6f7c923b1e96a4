"""``torchclf`` on the command line without plots and report.html, for tests that run it in a subprocess.

The counterpart of conftest's ``no_pictures`` fixture: the pictures cost about
3 s of CPU per run and say nothing about what those tests check (a launcher,
a run folder's model and metrics).

Usage: python tests/cli_without_pictures.py train ...   (the arguments of ``torchclf``)
"""

from __future__ import annotations

import sys

import torchclf.api
import torchclf.report

torchclf.api.write_plots = lambda *args, **kwargs: []
torchclf.report.write_report = lambda *args, **kwargs: None

if __name__ == "__main__":
    from torchclf.cli import main

    sys.exit(main(sys.argv[1:]))
