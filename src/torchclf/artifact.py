"""Saving and loading a trained model folder; the only module that reads one.

A run folder holds plain files: ``model.safetensors`` (weights),
``model.json`` (everything needed to rebuild the network, its preprocessing
and its labels, plus the versions that made it and the weights' SHA-256),
and, written by the workflow, ``metrics.json``, ``history.csv`` and
``plots/``. Loading never unpickles and never imports anything a file names.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from datetime import datetime
from pathlib import Path

from torchclf.errors import TorchclfError

FORMAT = "torchclf-run"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "model.safetensors"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # parsing costs up to ~20 times the file's size in memory
# Bounds that keep a hostile manifest from sizing a network (or a file read) without limit: what a
# manifest may ask for is checked before anything is built from it, and the predictor encodes rows in
# chunks sized by the widest layer, so predicting needs bounded memory however many rows come in.
MAX_WIDTH = 1 << 18  # units in any one layer: encoded inputs (one-hot categories included), hidden, outputs
MAX_CLASSES = 1 << 16  # classes, or labels of a multilabel model
MAX_PARAMETERS = 1 << 28  # numbers in all the weights together (1 GiB in float32)
MAX_LAYERS = 64
MAX_HEADER_BYTES = 1 << 20
# JSON files (manifests, checkpoints) nest a few levels; far deeper ones are hostile and would
# exhaust Python's recursion in the code that walks them.
MAX_JSON_DEPTH = 64


def versions() -> dict[str, str]:
    """Versions of torchclf and the libraries that shape a model's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import pandas
    import torch

    from torchclf import __version__

    try:  # from the installed package's metadata: importing scikit-learn costs a second that training never needs
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        sklearn_version = "not installed"
    return {
        "torchclf": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn_version,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, payload) -> None:
    """Write JSON to a temporary name beside ``path`` and rename it into place (see :func:`atomic_file`)."""
    with atomic_file(path) as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")


# ----- writing files: permissions, failures, special files -------------------------------
def _umask() -> int:
    """The process's umask, read without changing it where the system allows it (other threads may be
    creating files at this moment); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, mode: int = 0o666) -> None:
    """Give ``path`` the permissions a plain ``open`` (``mode`` 0o666) or ``mkdir`` (0o777) would have.

    Temporary names (``mkstemp``, ``mkdtemp``, safetensors' own) are created
    private, 0600 or 0700; a run folder or output meant to be shared must
    follow the user's umask like any other file they write.
    """
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def _named_errors(path: str | Path):
    """Give OSErrors raised without a file name (a failed write or flush) the name ``path``,
    so that the command line says ``<path>: <reason>``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from None
        raise


@contextlib.contextmanager
def as_the_target(out: str | Path):
    """Give OSErrors about ``out``'s hidden working names (``.NAME.*.partial``, ``.NAME.claim``) the name ``out``:
    the user asked for ``out``, and the working name means nothing to them (``/proc/x.csv``, not
    ``/proc/.x.csv.28609-6b4zy9o6.partial``)."""
    out = Path(out)
    hidden = str(out.parent / f".{out.name}.")
    try:
        yield
    except OSError as exc:
        if isinstance(exc.filename, str) and exc.filename.startswith(hidden) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(out)) from None
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path, newline: str | None = ""):
    """Yield a UTF-8 text stream whose content becomes the file ``out`` only if the block succeeds.

    A regular file, new or existing, is written to a hidden
    ``.NAME.PID-xxxx.partial`` beside it and renamed over it in one step (the
    writer's process id lets a later write remove what a killed one left, see
    :func:`remove_stale_partials`); the new file keeps the permissions of the
    one it replaces, or follows the umask. A symlink stays a link: the file it
    points to is the one replaced. A pipe (FIFO) or a character device
    (``/dev/null``, ``/dev/stdout``, a terminal) is written directly, as a
    shell's ``>`` would, and never renamed over. Folders, sockets and block
    devices are refused. A failed write raises an OSError that names the file.
    """
    out = Path(out)
    try:
        found = os.stat(out)  # follows symlinks
    except FileNotFoundError:
        found = None
    if found is not None and not stat.S_ISREG(found.st_mode):
        if stat.S_ISDIR(found.st_mode):
            raise TorchclfError(f"{out}: is a folder; give a file name such as predictions.csv")
        if not (stat.S_ISFIFO(found.st_mode) or stat.S_ISCHR(found.st_mode)):
            raise TorchclfError(f"{out}: is a special file (not a regular file, a pipe or a character device); "
                                "give a file name such as predictions.csv")
        with _named_errors(out), open(out, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
        return
    real = Path(os.path.realpath(out))
    real.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(real)
    prefix = f".{real.name}.{os.getpid()}-"
    tmp = None
    fd = _unnamed_file(real.parent)
    if fd is None:
        with as_the_target(real):
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=real.parent)
        tmp = Path(name)
    try:
        with _named_errors(real), open(fd, "w", encoding="utf-8", newline=newline) as fh:
            if found is not None and tmp is None:
                os.fchmod(fd, stat.S_IMODE(found.st_mode))
            elif found is not None:
                os.chmod(tmp, stat.S_IMODE(found.st_mode))
            elif tmp is not None:
                follow_umask(tmp)  # an unnamed file got the umask from the system already
            yield fh
            fh.flush()
            if tmp is None:  # name the finished file only now, beside its place
                tmp = real.parent / f"{prefix}{secrets.token_hex(4)}.partial"
                folder = os.open(real.parent, os.O_RDONLY)
                try:  # a folder descriptor makes Python call linkat, which can follow the /proc link
                    os.link(f"/proc/self/fd/{fd}", tmp.name, dst_dir_fd=folder, follow_symlinks=True)
                except OSError as exc:
                    tmp = None
                    raise OSError(exc.errno, exc.strerror, str(real)) from None
                finally:
                    os.close(folder)
        os.replace(tmp, real)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def _unnamed_file(folder: Path) -> int | None:
    """A descriptor of a new, still nameless file in ``folder`` (Linux's O_TMPFILE), or None where the
    system or the file system has none: a writer killed before it names the file leaves nothing behind."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY, 0o666)
    except OSError:  # e.g. not supported by this file system: fall back to a named temporary file
        return None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (a dead writer's leftovers may be removed)."""
    if os.name == "nt":  # os.kill would terminate the process there; never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_partials(out: str | Path) -> list[Path]:
    """Delete ``.NAME.PID-*.partial`` folders and files beside ``out`` left by writers that no longer run.

    A process killed while writing ``out`` leaves its hidden temporary folder
    (or file, see :func:`atomic_file`) behind; the next write to the same
    place removes it. Those whose writer is still running are left alone.
    """
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = f".{out.name}."
    for path in out.parent.iterdir():
        name = path.name
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_folder(out: str | Path):
    """Yield a temporary folder that becomes ``out`` only if the block succeeds.

    The temporary folder sits beside ``out`` (same file system) and is renamed
    in one step, so an interrupted run leaves either nothing or a complete
    folder; it follows the umask. An existing non-empty ``out`` is never
    overwritten, nor a name another process claimed (see
    :func:`claim_run_folder`). This process's claim on ``out`` is kept if the
    block fails and dropped once the folder is in place.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    claimed = os.path.abspath(out) in _CLAIMS
    if not claimed:
        _refuse_if_claimed(out)
    in_place = False
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise TorchclfError(f"{out}: already exists and is not empty; choose another --out or remove it")
        remove_stale_partials(out)
        # The writer's process id in the name lets a later run tell a dead writer's leftovers from a live one.
        with as_the_target(out):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".partial", dir=out.parent))
        try:
            follow_umask(tmp, 0o777)
            yield tmp
            if out.exists():
                out.rmdir()  # empty, checked above
            os.rename(tmp, out)
            in_place = True
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc.filename, str) and exc.filename.startswith(str(tmp)):
                # Name the file the user asked for, not the hidden temporary folder that is gone now.
                raise OSError(exc.errno, exc.strerror, str(out) + exc.filename[len(str(tmp)):]) from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if in_place and claimed:
            release_run_folder(out)


# ----- claiming a run folder's name before the work that fills it ----------------------------
# Absolute run folder path -> (the open descriptor that holds the claim, the id of the process that took it:
# a forked child inherits this table but holds none of the claims).
_CLAIMS: dict[str, tuple[int, int]] = {}
# A claim file is truncated when taken: never through a symlink someone put in its place.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _claim_file(out: Path) -> Path:
    return out.parent / f".{out.name}.claim"


def _lock(path: Path) -> int | None:
    """A descriptor holding an exclusive lock on ``path`` (created if absent), or None if another holds it.

    The lock belongs to the open file and ends when the process does, even when
    killed, so a crashed run's claim stops counting by itself. Where ``fcntl``
    is missing (Windows) the file is created exclusively and judged by the
    process id it holds instead.
    """
    try:
        import fcntl
    except ImportError:
        return _lock_by_pid(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The holder releases by removing the file, then unlocking: a lock won on a removed file is no claim.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _lock_by_pid(path: Path) -> int | None:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
        except FileExistsError:
            holder = _claim_holder(path)
            if holder is None or process_alive(holder):
                return None
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    return None


def _claim_holder(path: Path) -> int | None:
    """The process id written in a claim file, if it can be read."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def claim_run_folder(out: str | Path) -> Path:
    """Reserve the run folder name ``out`` for this process, before the work that will fill it.

    Takes an exclusive lock on a hidden ``.NAME.claim`` file beside ``out``, so
    that a second run with the same name, from any process, fails at once
    instead of after its training. :func:`atomic_folder` writes a claimed name
    (and refuses one another process claimed), puts the finished folder in
    place of the claim and drops it; call :func:`release_run_folder` if the
    work fails instead. The lock ends with the process, so a crashed run's
    claim blocks nobody (its file is reused by the next claim). Claiming a name
    this process already holds does nothing.

    Returns
    -------
    Path
        The claim file.
    """
    out = Path(out)
    path = _claim_file(out)
    key = os.path.abspath(out)
    if key in _CLAIMS:
        return path
    out.parent.mkdir(parents=True, exist_ok=True)
    with as_the_target(out):
        fd = _lock(path)
    if fd is None:
        raise _claimed_error(out, path)
    _CLAIMS[key] = (fd, os.getpid())
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        release_run_folder(out)
        raise TorchclfError(f"{out}: already exists and is not empty; choose another --out or remove it")
    return path


def _claimed_error(out: Path, path: Path) -> TorchclfError:
    holder = _claim_holder(path)
    who = f"process {holder}" if holder is not None else "another process"
    return TorchclfError(f"{out}: another torchclf run ({who}) is writing this run folder; choose another "
                         f"--out or wait for it to finish (a crashed run's claim {path.name} counts no more)")


def _refuse_if_claimed(out: Path) -> None:
    """Raise if another process holds a claim on ``out``; remove a crashed run's claim file.

    Writers that did not claim (checkpoints, compare's folders, the estimator's
    ``save``) leave no claim file behind them.
    """
    path = _claim_file(out)
    if not os.path.lexists(path):
        return
    fd = _lock(path)
    if fd is None:
        raise _claimed_error(out, path)
    _drop_claim(path, fd)


def _drop_claim(path: Path, fd: int) -> None:
    """Remove a claim file this process holds the lock on, then unlock it (in that order: see _lock)."""
    try:
        if os.name == "nt":
            os.close(fd)  # Windows cannot remove an open file
            fd = None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        if fd is not None:
            os.close(fd)


def release_run_folder(out: str | Path) -> None:
    """Give up this process's claim on ``out`` (after a failed run); nothing if it holds none."""
    out = Path(out)
    fd, pid = _CLAIMS.pop(os.path.abspath(out), (None, None))
    if fd is None or pid != os.getpid():
        return
    _drop_claim(_claim_file(out), fd)


@atexit.register
def _release_all() -> None:
    """At exit, give up the claims still held so that their files go too (a killed process leaves them,
    unlocked, for the next claim of the same name to reuse)."""
    for key in list(_CLAIMS):
        release_run_folder(key)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """A new run folder ``ROOT/STEM-YYYYmmdd-HHMMSS-xxxxxx`` for a source ``name``, claimed for this process.

    The random suffix keeps runs started in the same second apart, and the
    name is claimed (see :func:`claim_run_folder`) before it is returned, so
    no other process can pick it; call :func:`release_run_folder` if no folder
    is written after all.
    """
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(name.split(":")[0]).stem) or "run"
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    for _ in range(100):
        path = Path(root) / f"{stem}-{stamp}-{secrets.token_hex(3)}"
        if path.exists() or os.path.abspath(path) in _CLAIMS:
            continue
        try:
            claim_run_folder(path)
        except TorchclfError:
            continue
        return path
    raise TorchclfError(f"{root}: found no free run folder name for {stem!r}; pass --out")


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``tensors`` (name -> contiguous CPU tensor) as a safetensors file that follows the umask.

    A failed write (a full disk, a missing permission) raises an OSError that
    names ``path``, not the library's own error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        # The library reports the system's error only as text, e.g. "... No space left on device (os error 28)".
        code = re.search(r"os error (\d+)", str(exc))
        if code is not None:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TorchclfError(f"{path}: cannot write the weights: {first}") from None
    follow_umask(path)  # safetensors writes a private temporary file and renames it


def save_model(folder: Path, manifest: dict, state_dict: dict) -> None:
    """Write the weights and the manifest (with format, versions and weight hash)."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_tensors(folder / WEIGHTS, tensors, {"format": FORMAT})
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        **manifest,
    }
    write_json(folder / MANIFEST, full)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a run folder, checked for format and version."""
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise TorchclfError(f"{folder}: is a file, not a run folder; give the folder `torchclf train` wrote")
    if not folder.is_dir():
        raise TorchclfError(f"{folder}: no such run folder (train one with `torchclf train`)")
    if not path.is_file():
        if any(folder.glob("epoch-*/checkpoint.json")):
            raise TorchclfError(f"{folder}: holds training checkpoints, not a finished run; "
                                f"finish it with `torchclf train --resume {folder}`")
        raise TorchclfError(f"{folder}: not a torchclf run folder (no {MANIFEST}); give a folder `torchclf train` wrote")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TorchclfError(f"{path}: too large to be a torchclf manifest")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TorchclfError(f"{path}: not a torchclf manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise TorchclfError(f"{path}: invalid format version {version!r}; re-train or restore the model")
    if version > FORMAT_VERSION:
        raise TorchclfError(
            f"{path}: format version {version!r} is newer than this torchclf reads ({FORMAT_VERSION}); upgrade torchclf"
        )
    return manifest


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _nested_deeper_than(doc, limit: int) -> bool:
    """Whether lists and objects in a parsed JSON document nest more than ``limit`` levels (walked
    without recursion, so a hostile depth cannot exhaust the stack here)."""
    if not isinstance(doc, (dict, list)):
        return False
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def read_json(path: Path, what: str):
    """Parse a JSON file strictly: UTF-8, no NaN/Infinity, at most MAX_JSON_DEPTH levels, a one-line error."""
    too_deep = TorchclfError(f"{path}: damaged {what} (lists and objects nested more than {MAX_JSON_DEPTH} "
                             "levels deep); re-train or restore the file")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise too_deep from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise TorchclfError(
            f"{path}: damaged {what} ({type(exc).__name__}); re-train or restore the file"
        ) from None
    if _nested_deeper_than(doc, MAX_JSON_DEPTH):
        raise too_deep
    return doc


def _parts(manifest: dict, where: str):
    """Validate a manifest's contents and build its plain parts (no network yet)."""
    from torchclf.config import RunConfig
    from torchclf.preprocess import LabelCoder, Preprocessor
    from torchclf.task import Task

    def expect(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise TorchclfError(f"{where}: invalid manifest: {field} must be {expected}; re-train or restore the model")

    for key in ("config", "task", "preprocess", "labels"):
        expect(isinstance(manifest.get(key), dict), key, "an object")
    config_d = manifest["config"]
    for key in ("model", "train", "data"):
        expect(isinstance(config_d.get(key, {}), dict), f"config.{key}", "an object")
    hidden = config_d.get("model", {}).get("hidden", [])
    expect(isinstance(hidden, list) and len(hidden) <= MAX_LAYERS
           and all(type(h) is int and 1 <= h <= MAX_WIDTH for h in hidden),
           "config.model.hidden", f"a list of at most {MAX_LAYERS} layer sizes in [1, {MAX_WIDTH}]")
    n_inputs = manifest.get("n_inputs")
    expect(type(n_inputs) is int and 1 <= n_inputs <= MAX_WIDTH, "n_inputs", f"an integer in [1, {MAX_WIDTH}]")
    # Count what the preprocessing and labels ask for before anything is built from them.
    columns = manifest["preprocess"].get("columns")
    if isinstance(columns, list):
        # An embedded column is one code wide; its embedding's size is checked with the network's parameters.
        width = sum(len(c["categories"]) + 1 if isinstance(c, dict) and isinstance(c.get("categories"), list)
                    and c.get("embed") is not True else 1 for c in columns)
        expect(width <= MAX_WIDTH, "preprocess.columns",
               f"at most {MAX_WIDTH} encoded inputs in all, one-hot categories included (found {width})")
    classes = manifest["labels"].get("classes")
    if isinstance(classes, list):
        expect(len(classes) <= MAX_CLASSES, "labels.classes",
               f"at most {MAX_CLASSES} classes or labels (found {len(classes)})")
    expect(manifest.get("label_sep") is None or isinstance(manifest.get("label_sep"), str), "label_sep", "text or null")
    for key in ("target_columns", "feature_names"):
        value = manifest.get(key, [])
        expect(isinstance(value, list) and all(isinstance(v, str) for v in value), key, "a list of column names")
    expect(isinstance(manifest.get("extra", {}), dict), "extra", "an object")
    try:
        config = RunConfig.from_dict(config_d)
        task = Task.from_dict(manifest["task"])
        preprocessor = Preprocessor.from_dict(manifest["preprocess"])
        labels = LabelCoder.from_dict(manifest["labels"])
    except TorchclfError as exc:
        raise TorchclfError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TorchclfError(f"{where}: invalid manifest ({type(exc).__name__}: {exc}); re-train the model") from None
    if "feature_names" in manifest and manifest["feature_names"] != preprocessor.feature_names:
        raise TorchclfError(f"{where}: manifest is inconsistent (feature_names differ from the preprocessing's columns)")
    if preprocessor.n_outputs != n_inputs:
        raise TorchclfError(f"{where}: manifest is inconsistent (preprocessing gives {preprocessor.n_outputs} inputs, network expects {n_inputs})")
    if labels.n_classes != task.n_classes or labels.multilabel != (task.kind == "multilabel"):
        raise TorchclfError(f"{where}: manifest is inconsistent ({labels.n_classes} labels for a {task.kind} task with {task.n_classes} classes)")
    return config, task, preprocessor, labels, n_inputs


MAX_OBJECTIVE_CHARS = 200


def decisions(manifest: dict, task, where: str):
    """The manifest's calibration and decision threshold, checked; absent in runs saved before them.

    Returns
    -------
    calibration : Calibration or None
    threshold : float, ndarray of shape (n_labels,), or None
    objective : str or None
        What chose the threshold (``"f1"``, ``"manual"``, ...).
    """
    import numpy as np

    from torchclf.calibration import Calibration

    calibration = manifest.get("calibration")
    if calibration is not None:
        calibration = Calibration.from_dict(calibration, task, f"{where}: invalid manifest: calibration")
    record = manifest.get("threshold")
    if record is None:
        return calibration, None, None

    def bad(expected: str):
        return TorchclfError(f"{where}: invalid manifest: threshold must be {expected}; re-train or restore the model")

    if not isinstance(record, dict) or set(record) != {"objective", "value"}:
        raise bad("null or an object with the keys objective and value")
    objective = record["objective"]
    if not isinstance(objective, str) or not 0 < len(objective) <= MAX_OBJECTIVE_CHARS:
        raise bad(f"named by an objective of 1 to {MAX_OBJECTIVE_CHARS} characters")
    if not task.takes_threshold:
        raise bad("null for a multiclass model")
    value = record["value"]
    n = task.n_outputs
    numbers = value if isinstance(value, list) and n > 1 else [value]
    if len(numbers) != (n if isinstance(value, list) else 1) or not all(
            type(v) in (int, float) and math.isfinite(v) and 0 < v < 1 for v in numbers):
        raise bad(f"a probability in (0, 1){f' or a list of {n}' if n > 1 else ''}")
    return calibration, (np.asarray(value, dtype=np.float64) if isinstance(value, list) else float(value)), objective


def _expected_tensors(config, task, preprocessor, where: str = "model") -> dict:
    """Name -> (shape, dtype) of the network a manifest describes, worked out without building it;
    a network of more than MAX_PARAMETERS numbers is refused."""
    from torchclf.model import state_shapes

    expected = state_shapes(preprocessor.layout(), task.n_outputs, config.model)
    total = sum(math.prod(shape) for shape, _ in expected.values())
    if total > MAX_PARAMETERS:
        raise TorchclfError(f"{where}: invalid manifest: the network it describes has {total} parameters, more "
                            f"than a torchclf model may have ({MAX_PARAMETERS}); re-train or restore the model")
    return expected


def _check_weights(expected: dict, state_dict: dict, where: str) -> None:
    """The loaded tensors must be exactly the network's: names, shapes, one float dtype, finite values."""
    import torch

    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    shapes = {k: shape for k, (shape, _) in expected.items()}
    if shapes != found:
        diff = sorted(set(shapes.items()) ^ set(found.items()))[:3]
        raise TorchclfError(f"{where}: weights do not fit the network in the manifest (first differences: {diff})")
    floating = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(floating) > 1 or not floating <= {torch.float16, torch.bfloat16, torch.float32, torch.float64}:
        raise TorchclfError(f"{where}: weights have unexpected dtypes {sorted(map(str, floating))}; re-train the model")
    for name, (_, dtype) in expected.items():
        if dtype.is_floating_point != state_dict[name].is_floating_point() or (
            not dtype.is_floating_point and state_dict[name].dtype != dtype
        ):
            raise TorchclfError(f"{where}: weight {name!r} has dtype {state_dict[name].dtype}, expected {dtype}")
        if state_dict[name].is_floating_point() and not bool(torch.isfinite(state_dict[name]).all()):
            raise TorchclfError(f"{where}: weight {name!r} holds NaN or infinite values; re-train the model")


def load_model(folder: str | Path) -> tuple[dict, dict]:
    """Read a run folder's manifest and weights, verifying them before use.

    The manifest is validated and the network it describes is sized without
    allocating it; the weights file must not be larger than that network
    needs, must match the SHA-256 recorded at save time, and must hold exactly
    the expected tensors. Nothing is unpickled or imported.

    Returns
    -------
    manifest : dict
    state_dict : dict of str to Tensor
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    config, task, preprocessor, _, _ = _parts(manifest, str(folder))
    expected = _expected_tensors(config, task, preprocessor, str(folder))
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TorchclfError(f"{folder}: the weights file {WEIGHTS} is missing; re-train or restore it")
    limit = 8 * sum(math.prod(shape) for shape, _ in expected.values()) + MAX_HEADER_BYTES
    if weights.stat().st_size > limit:
        raise TorchclfError(
            f"{weights}: {weights.stat().st_size} bytes is more than the network in the manifest needs "
            f"(at most {limit}); the file is not this model's weights"
        )
    digest = manifest.get("weights_sha256")
    if not isinstance(digest, str) or sha256_file(weights) != digest:
        raise TorchclfError(
            f"{weights}: SHA-256 does not match the manifest; the file is damaged or was changed"
        )
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TorchclfError(f"{weights}: cannot be read as safetensors: {first}") from None
    _check_weights(expected, state_dict, str(folder))
    return manifest, state_dict


def rebuild(manifest: dict, state_dict: dict, where: str = "model"):
    """Rebuild the network, task, preprocessing and labels a manifest describes.

    Returns
    -------
    model : torch.nn.Module, in eval mode, weights loaded
    task : Task
    preprocessor : Preprocessor
    labels : LabelCoder
    config : RunConfig
    """
    from torchclf.model import build_model

    config, task, preprocessor, labels, _ = _parts(manifest, where)
    _check_weights(_expected_tensors(config, task, preprocessor, where), state_dict, where)
    model = build_model(preprocessor.layout(), task.n_outputs, config.model)
    floating = [v.dtype for v in state_dict.values() if v.is_floating_point()]
    if floating:
        model.to(floating[0])  # keep the precision the weights were saved in (float64 from the estimator)
    model.load_state_dict(state_dict)
    model.eval()
    return model, task, preprocessor, labels, config
