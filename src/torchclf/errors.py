"""The one exception type that front doors turn into a one-line message."""


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
