"""Files in and out, safely.

Output is atomic: a reader never sees a half-written file, an interrupted write leaves the old file intact, and
files get the permissions the user's umask gives new files (``0644`` under the usual ``022``), not the private
``0600`` of temporary files. Work in progress is named ``.NAME.<random>.part<suffix>`` next to its target, a hidden
name that :func:`input_files` never lists, so a file left behind by a killed run is never read as an input.

Input readers raise :class:`~medcore.errors.UserError` naming the file and the problem: :func:`read_json` for JSON,
:func:`load_torch` for PyTorch files (tensors only: a file that holds pickled Python objects is refused).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Sequence

from .errors import UserError, first_line

if TYPE_CHECKING:  # numpy is imported where an array is read, not by every command that writes a file
    import numpy as np

__all__ = ["OUTPUT_MARKER", "is_byte_code_cache", "listed_outputs", "check_replaceable", "first_line_is",
           "mark_output", "claim_output_dir", "atomic_path", "atomic_directory", "write_json", "write_text",
           "write_csv", "writing_into", "remove_leftovers",
           "input_files", "find_named", "check_distinct_names", "resolve_path", "path_problem", "require_file",
           "read_user_text", "read_json", "parse_json", "npy_header", "read_npy", "load_torch", "state_dict_of"]

#: A JSON file in each folder this project writes outputs into: ``{"written_by": [kinds], "files": [...]}``. A folder
#: a command replaces as a whole (a job) lists every file it wrote (``files``): a later run may replace it only while
#: it holds nothing else. A folder commands write named files into (maps, reports) lists only the kinds.
OUTPUT_MARKER = ".clara-open-output"


def _read_marker(folder: Path) -> dict:
    marker = folder / OUTPUT_MARKER
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def listed_outputs(folder: str | os.PathLike) -> set[str]:
    """The files (relative paths) that ``folder``'s marker (:func:`mark_output` with ``manifest``) lists as its own
    output; empty for a folder without one."""
    listed = _read_marker(Path(folder)).get("files")
    return {str(rel) for rel in listed} if isinstance(listed, list) else set()


def _is_own_marker(path: Path) -> bool:
    """Whether ``path`` is a marker :func:`mark_output` wrote (a user's file of that name is not)."""
    return path.name == OUTPUT_MARKER and "written_by" in _read_marker(path.parent)


def is_byte_code_cache(folder: Path, rel: Path, sources: Collection[str]) -> bool:
    """Whether ``folder / rel`` is the byte-code cache Python writes on importing one of ``sources`` (paths of
    ``.py`` files relative to ``folder``): ``DIR/__pycache__/NAME.<this Python's tag>[.opt-N].pyc`` next to a listed
    ``DIR/NAME.py``, starting with this Python's magic number. Anything else, whatever its name (a ``*.pyc`` of
    one's own, a note in ``__pycache__``), is not a cache."""
    import importlib.util
    import sys

    parts = rel.parts
    pieces = parts[-1].split(".") if parts else []
    if (len(parts) < 2 or parts[-2] != "__pycache__" or len(pieces) < 3 or pieces[-1] != "pyc"
            or pieces[1] != sys.implementation.cache_tag):
        return False
    if str(Path(*parts[:-2], pieces[0] + ".py")) not in sources:
        return False
    try:
        with open(folder / rel, "rb") as handle:
            return handle.read(4) == importlib.util.MAGIC_NUMBER
    except OSError:
        return False


def _files_below(folder: Path) -> list[str]:
    """Files under ``folder`` except this project's markers (links and special files count as files)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if (p.is_symlink() or not p.is_dir()) and not _is_own_marker(p))


def _foreign_files(folder: Path, listed: Iterable[str]) -> list[str]:
    """Files under ``folder`` that its manifest ``listed`` does not hold: the user's, except the byte-code caches
    of listed modules (Python writes them on import)."""
    listed = set(listed)
    return [rel for rel in _files_below(folder)
            if rel not in listed and not is_byte_code_cache(folder, Path(rel), listed)]


def check_replaceable(path: str | os.PathLike, what: str,
                      recognise: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before anything is written, to replace ``path`` unless it is this project's own earlier output.

    ``path`` may be replaced when it does not exist, is an empty folder, is a folder marked (:func:`mark_output`)
    as a ``what`` and holding no file beyond those the marker lists, or when ``recognise(path)`` accepts it (the
    exact shape of the output, e.g. a CSV's header).

    Raises:
        UserError: naming ``path`` (or the file in it that is not the project's) and saying why.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        marker = _read_marker(path)
        if what in marker.get("written_by", []):
            listed = marker.get("files")
            foreign = [] if listed is None else _foreign_files(path, listed)
            if not foreign:
                return
            raise UserError(f"{path / foreign[0]}: not written by this project, inside the {what} {path}; refusing "
                            "to replace the folder (move the file away first)")
    if recognise is not None and recognise(path):
        return
    raise UserError(f"{path}: exists and is not a {what} written by this project; refusing to replace it "
                    "(choose a new path, or move it away yourself)")


def mark_output(folder: str | os.PathLike, what: str, manifest: bool = False) -> Path:
    """Mark ``folder`` as written by this project as a ``what``, so that :func:`check_replaceable` and
    :func:`claim_output_dir` let later runs replace it; ``manifest`` lists every file now in it (call it last)."""
    folder = Path(folder)
    marker = _read_marker(folder)
    kinds = list(dict.fromkeys([*marker.get("written_by", []), what]))
    content: dict[str, Any] = {"written_by": kinds}
    if manifest:
        below = _files_below(folder)
        sources = set(below)
        content["files"] = [rel for rel in below if not is_byte_code_cache(folder, Path(rel), sources)]
    return write_json(folder / OUTPUT_MARKER, content)


def claim_output_dir(path: str | os.PathLike, what: str, names: Iterable[str]) -> Path:
    """Make folder ``path`` ready for the files ``names`` a ``what`` writes: refused (naming the file) when one of
    them exists in a folder not marked as holding ``what`` outputs, so a user's file is never overwritten; else
    the folder is created if needed and marked. Call it once the inputs are checked, before the first write."""
    path = Path(path)
    if path.is_dir() and what not in _read_marker(path).get("written_by", []):
        for name in names:
            if (path / name).exists() or (path / name).is_symlink():
                raise UserError(f"{path / name}: exists and was not written by {what} in this folder; refusing to "
                                "overwrite it (choose another output folder, or move the file away)")
    path.mkdir(parents=True, exist_ok=True)
    mark_output(path, what)
    return path


def first_line_is(line: str) -> Callable[[Path], bool]:
    """A recogniser for :func:`check_replaceable`: a file whose first line is exactly ``line`` (a CSV header)."""

    def recognise(path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            return handle.readline(len(line) + 3).decode(errors="replace").rstrip("\r\n") == line

    return recognise


def remove_leftovers(parent: Path, name: str) -> list[Path]:
    """Remove what a killed earlier write of ``parent / name`` left behind (``.NAME.<8 hex>.part<suffix>`` files
    and folders, names only :func:`atomic_path` and :func:`atomic_directory` make); returns what was removed."""
    import re

    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.part(\.[^/]*)?")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def _new_temp(parent: Path, name: str, suffix: str, directory: bool = False) -> Path:
    """Create an empty hidden file (or folder) ``.NAME.<random>.part<suffix>`` in ``parent`` with the umask's
    default permissions (``tempfile`` would make it private), after removing those a killed run left behind."""
    remove_leftovers(parent, name)
    for _ in range(100):
        path = parent / f".{name}.{secrets.token_hex(4)}.part{suffix}"
        try:
            if directory:
                path.mkdir()
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: cannot find a free temporary name for {name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` in one step.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and keeps ``path``'s suffix
    unless ``suffix`` is given, because some writers (nibabel, tifffile) pick the format from it. On an exception
    the temporary file is removed and ``path`` is left untouched; a file-system error (no space, permissions)
    names ``path``, not the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) if suffix is None else suffix
        tmp_path = _new_temp(path.parent, path.name, suffix)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as err:
        named = _write_error(err, tmp_path, path)
        if named is None:
            raise
        raise named from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_error(err: BaseException, tmp_path: Path, path: Path) -> OSError | None:
    """The error of a failed write to ``tmp_path`` as an ``OSError`` naming ``path`` (the file the user asked
    for), or None when ``err`` is not about writing it. Writers report a full disk or the file-size limit in their
    own ways (numpy: an ``OSError`` without a file name; PyTorch: a ``RuntimeError``); a file at the size limit or
    a file system without free space tells which it was."""
    import resource

    if isinstance(err, UserError) or isinstance(err, OSError) and err.filename not in (None, str(tmp_path),
                                                                                       tmp_path):
        return None  # the user's input, or another file, which it names
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        with contextlib.suppress(OSError, ValueError):
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY and tmp_path.exists() and tmp_path.stat().st_size >= limit:
                code = errno.EFBIG
            else:
                fs = os.statvfs(tmp_path.parent)
                code = errno.ENOSPC if fs.f_bavail * fs.f_frsize < (1 << 20) else None
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory that replaces the directory ``path`` when the block succeeds.

    The staging directory has the same name as ``path`` (inside a hidden sibling folder), so files named after
    their folder can be written and checked in place before they appear. An existing ``path`` is only removed
    once the new content is complete; on an exception it is left untouched and the staging folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = _new_temp(path.parent, path.name, "", directory=True)
    staged = holder / path.name
    staged.mkdir()
    try:
        yield staged
        if path.exists():
            os.replace(path, holder / ".old")
        os.replace(staged, path)
    except OSError as err:  # name the file the user will look for, not its staging copy (nor a file copied in)
        if err.filename is not None and Path(err.filename).is_relative_to(staged):
            raise OSError(err.errno, err.strerror, str(path / Path(err.filename).relative_to(staged))) from None
        raise _named_write_error(err, path) from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)


#: The errors of a write that the disk or a limit stopped, whichever file the library names (a copy names its
#: source): the message names the output instead.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _named_write_error(err: OSError, path: Path) -> OSError:
    """``err`` itself, or for a full disk or the file-size limit the same error naming ``path``."""
    return OSError(err.errno, err.strerror, str(path)) if err.errno in _WRITE_ERRNOS else err


@contextlib.contextmanager
def writing_into(path: str | os.PathLike) -> Iterator[None]:
    """A block that writes into ``path`` (a folder, through libraries such as FLARE's job export): a full disk or
    the file-size limit is reported naming ``path`` rather than whatever file the library was copying."""
    try:
        yield
    except OSError as err:
        named = _named_write_error(err, Path(path))
        if named is err:
            raise
        raise named from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None,
              lineterminator: str = "\n") -> Path:
    """Write ``header`` (if any) and ``rows`` as CSV to ``path`` atomically and return the path.

    ``lineterminator`` is ``"\n"`` for the pathology tables (the challenge's files use it) and ``"\r\n"``, the
    ``csv`` module's RFC 4180 default, for the BraTS tables, as each has always been written.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=lineterminator)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def _visible(path: Path, folder: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def input_files(folder: str | os.PathLike, pattern: str, recursive: bool = False) -> list[Path]:
    """Files whose names match ``pattern`` case-insensitively (``*.tif`` finds ``B.TIF``) in ``folder`` (and below
    with ``recursive``), sorted, without hidden names: never a ``.NAME.part`` file still being written (or left
    behind by a killed run), nor anything in a hidden folder."""
    folder = Path(folder)
    pattern = pattern.lower()
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in found if fnmatch.fnmatchcase(p.name.lower(), pattern) and p.is_file()
                  and _visible(p, folder))


def find_named(folder: str | os.PathLike, name: str, what: str = "file") -> Path | None:
    """The visible entry of ``folder`` named ``name``, its case ignored (``TEST_001.csv`` for ``test_001.csv``), or
    None; a :class:`UserError` when two entries differ only in case (which one is meant cannot be told)."""
    folder = Path(folder)
    try:
        entries = [e for e in os.listdir(folder) if not e.startswith(".") and e.lower() == name.lower()]
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"{folder}: cannot list the folder ({err.strerror or err})") from None
    if len(entries) > 1:
        raise UserError(f"{folder}: {' and '.join(sorted(entries))} differ only in case; keep the one {what} meant "
                        "for the slide and move the other away")
    return folder / entries[0] if entries else None


def check_distinct_names(paths: Sequence[Path], what: str, outputs: str) -> None:
    """Refuse inputs whose outputs would be named alike: ``paths`` (files whose stems name the ``outputs``) with
    the same stem in any case (``a/s.tif`` and ``b/S.tif``), naming them, before anything is written."""
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(path.stem.lower(), path)
        if other != path:
            raise UserError(f"{other} and {path}: two {what} of one name; their {outputs} would overwrite each "
                            "other (give them distinct names, or run them into separate output folders)")


def resolve_path(path: str, what: str, site: str = "") -> Path:
    """Expand ``$VARS``, ``~`` and ``{site}`` (the site's name, so that one job can point each site of a
    simulation or POC federation at its own data); an unset variable is an error that says which one to set."""
    expanded = os.path.expanduser(os.path.expandvars(path.replace("{site}", site) if site else path))
    if "$" in expanded:
        raise UserError(f"{what} {path!r}: environment variable not set (export it before starting the site)")
    return Path(expanded)


def path_problem(path: str | os.PathLike, kind: str = "file") -> str | None:
    """Why ``path`` is not an existing ``kind`` (``"file"``, ``"folder"`` or ``"file or folder"``), in words, or
    None when it is one: ``no such file``, ``a symbolic link to a missing target``, ``a loop of symbolic links``,
    ``is a folder, not a file``, ``is a file, not a folder``, ``not a regular file`` or the system's reason."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symbolic link to a missing target" if path.is_symlink() else f"no such {kind}"
    except OSError as err:
        return "a loop of symbolic links" if err.errno == errno.ELOOP else f"cannot be reached ({err.strerror})"
    if kind == "file" and not stat.S_ISREG(mode):
        return "is a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file"
    if kind == "folder" and not stat.S_ISDIR(mode):
        return "is a file, not a folder"
    return None


def require_file(path: str | os.PathLike, what: str, error: type[UserError] = UserError) -> Path:
    """``path`` as a Path when it is an existing file, else an ``error`` saying ``PATH: <what> missing`` or why
    it is not one (a folder, a broken or looping symbolic link, a device)."""
    path = Path(path)
    problem = path_problem(path)
    if problem == "no such file":
        raise error(f"{path}: {what} missing")
    if problem is not None:
        raise error(f"{path}: {problem} (expected the {what})")
    return path


def read_user_text(path: str | os.PathLike, what: str = "file", error: type[UserError] = UserError) -> str:
    """The UTF-8 text of a user's file, or an ``error`` naming it when it is missing, unreadable or not text."""
    path = require_file(path, what, error)
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSVs) is not part of the text
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    except OSError as err:  # no permission, an I/O error: the user's file, not a bug
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[UserError] = UserError) -> Any:
    """The content of a JSON file, or an ``error`` (a :class:`UserError` type) saying ``PATH: <what> missing`` or
    ``PATH: not valid JSON (...)``."""
    path = Path(path)
    return parse_json(read_user_text(path, what, error), str(path), error)


def parse_json(text: str, source: str, error: type[UserError] = UserError) -> Any:
    """``text`` parsed as JSON, or an ``error`` naming ``source``: not JSON, or nested too deeply for Python's
    parser (200,000 levels of brackets are a few hundred kilobytes)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{source}: not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply to read") from None


def npy_header(path: str | os.PathLike, what: str = "array",
               error: type[UserError] = UserError) -> tuple[tuple[int, ...], "np.dtype"]:
    """A NumPy ``.npy`` file's (shape, dtype), from its header alone, checked: not a ``.npy`` file, an array of
    Python objects (refused: unpickling could run code) or fewer bytes than the header promises (a truncated or
    forged file, which would otherwise ask for any amount of memory) are an ``error`` naming the file."""
    import numpy as np

    path = require_file(path, what, error)
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise error(f"{path}: not a NumPy .npy file (expected the {what})")
            handle.seek(0)
            version = np.lib.format.read_magic(handle)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(handle))
            offset = handle.tell()
    except error:
        raise
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except (ValueError, SyntaxError, TypeError) as err:
        raise error(f"{path}: not a readable .npy {what} (its header: {first_line(err)})") from None
    if dtype.hasobject:
        raise error(f"{path}: the {what} holds Python objects and is refused for safety (unpickling them could "
                    "run arbitrary code)")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = path.stat().st_size - offset
    if actual < expected:
        raise error(f"{path}: truncated {what} (its header promises {expected} bytes of {dtype} data of shape "
                    f"{tuple(shape)}, the file holds {actual})")
    return tuple(shape), dtype


def read_npy(path: str | os.PathLike, what: str = "array", error: type[UserError] = UserError) -> "np.ndarray":
    """A NumPy ``.npy`` file's array, its header checked first (:func:`npy_header`) before any data is read."""
    import numpy as np

    npy_header(path, what, error)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise error(f"{path}: cannot read the {what} ({first_line(err)})") from None


def load_torch(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu",
               unreadable: str | None = None) -> Any:
    """Load a PyTorch file that holds tensors and plain containers only (``weights_only``).

    Args:
        what: what the file is, for the messages (``"<what> missing"``).
        unreadable: how the message for a corrupt file starts (default ``"not a readable PyTorch <what>"``).

    Raises:
        UserError: the file is missing, corrupt or not a PyTorch file, holds pickled Python objects beyond
            tensors (refused for safety: unpickling them can run arbitrary code), or holds a floating-point tensor
            with a NaN or an infinity (weights of a diverged run), named by its key path.
    """
    import pickle

    import torch

    path = require_file(path, what)
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message for both cases suggests retrying with weights_only=False: never pass that on.
        if "GLOBAL" in str(err):
            raise UserError(f"{path}: the {what} holds Python objects besides tensors and is refused for safety "
                            "(unpickling them could run arbitrary code); use a file written by this project or a "
                            "plain state dict") from None
        raise UserError(f"{path}: {unreadable or f'not a readable PyTorch {what}'} (corrupt, truncated or another "
                        "format)") from None
    except Exception as err:  # torch raises many types (RuntimeError, EOFError, zipfile errors) for corrupt files
        raise UserError(f"{path}: {unreadable or f'not a readable PyTorch {what}'} (corrupt, truncated or another "
                        f"format: {first_line(err)})") from None
    bad = _first_non_finite(content)
    if bad is not None:  # weights of a diverged run: every map, score and AUC made from them would be NaN
        raise UserError(f"{path}: the {what} holds NaN or infinite values (in {bad}); the training that wrote it "
                        "diverged")
    return content


def state_dict_of(content: Any, path: str | os.PathLike) -> dict:
    """The model weights in a loaded checkpoint (:func:`load_torch`): a bare state dict, or one under ``model``
    (this project's and FLARE's checkpoints) or ``state_dict``; a ``module.`` prefix (DataParallel) is dropped.

    Raises:
        UserError: naming ``path`` when there are no weights.
    """
    import torch

    if isinstance(content, dict):
        for key in ("model", "state_dict"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content or not all(torch.is_tensor(v) for v in content.values()):
        raise UserError(f"{path}: no model weights found (expected a state dict, or one under 'model' or "
                        "'state_dict')")
    return {str(k).removeprefix("module."): v for k, v in content.items()}


def _first_non_finite(content: Any, where: str = "") -> str | None:
    """The key path of the first floating-point tensor in ``content`` (nested dicts, lists, tuples) that holds a
    NaN or an infinity, or None."""
    import torch

    if isinstance(content, torch.Tensor):
        if content.is_floating_point() and not bool(torch.isfinite(content).all()):
            return where or "the tensor"
        return None
    items = content.items() if isinstance(content, dict) else enumerate(content) \
        if isinstance(content, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None
