"""The exception front doors turn into one line, "did you mean" hints, and warnings naming the caller's line."""

import functools


class TorchclfError(ValueError):
    """A problem with the user's input or files, worded for the user.

    The message says what went wrong, where, and how to fix it. Front doors
    print it as one line (no traceback) and exit non-zero; library callers can
    catch it like any ``ValueError``.
    """


def closest(name: str, candidates, n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (for "did you mean")."""
    import difflib

    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn``, attributed to the line that called into torchclf, however deep the call.

    A fixed ``stacklevel`` points at the right frame from one entry point only; from another (the
    estimator's ``fit``, ``torchclf.train``, a ``Preprocessor``) it names a line inside torchclf. The frames
    of torchclf, of scikit-learn (whose decorators wrap the estimator's methods) and of joblib (through which
    ``cross_val_score`` and the searches call ``fit``) are skipped.
    """
    import sys
    import warnings

    skipped = _package_folders()
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


@functools.cache
def _package_folders() -> tuple[str, ...]:
    import importlib.util
    import os

    folders = [os.path.dirname(os.path.abspath(__file__))]
    for package in ("sklearn", "joblib"):  # found without importing them
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders += list(spec.submodule_search_locations)
    return tuple(os.path.join(folder, "") for folder in folders)
