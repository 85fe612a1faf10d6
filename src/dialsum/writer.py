"""The one place that writes files: a command's outputs are claimed before any expensive step, and every file is
written atomically.

Claiming (`OutputPlan`): each output a user names (`--output`, `--json`, `--per-sample`, `--output-dir`, ...) is
checked before a model loads or a score is computed. It must not be a directory (or, for an output directory, a
file); no file may stand where one of its parent folders should be; the first folder that exists above it must be
writable; it must not be one of the command's inputs (paths resolved, symlinks and hard links included), nor
claimed twice by one command; and an existing file is replaced only with `--overwrite` (an existing output
directory that is not empty likewise). A failure is one line naming the flag and the path, before anything is
written.

Writing (`write_text`, `write_json`, `write_csv`, `open_atomic`, `atomic_directory`, `save_figure`): into a
temporary sibling, flushed to disk, then renamed over the target, so a kill or Ctrl-C never leaves half a file or
half a model directory, and a file that exists is complete. Files inside a run directory are the run's own and are
rewritten the same way; append-only logs (metrics.jsonl) go through `append_line`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dialsum.errors import DialsumError

__all__ = [
    "OutputPlan",
    "append_line",
    "atomic_directory",
    "commit_directory",
    "open_atomic",
    "save_figure",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]

OVERWRITE_HELP = "Replace output files that already exist (never an input file)."


class OutputError(DialsumError):
    """An output path that cannot or must not be written."""


def _first_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


class OutputPlan:
    """The outputs one command will write, checked together before any expensive step.

    `inputs` are the files (or directories) the command reads; no output may be one of them. `overwrite` is the
    command's `--overwrite` flag."""

    def __init__(self, inputs: Iterable[str | Path | None] = (), overwrite: bool = False):
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.overwrite = overwrite
        self.claimed: list[tuple[Path, str]] = []

    def _check_common(self, path: Path, flag: str) -> None:
        where = f"{flag} {path}" if flag else str(path)
        for source in self.inputs:
            if _same_file(path, source):
                raise OutputError(f"{where}: is an input of this command ({source}); write the output elsewhere")
        for other, other_flag in self.claimed:
            if _same_file(path, other):
                raise OutputError(f"{where}: is also the path given to {other_flag}; give each output its own path")
        existing = _first_existing(path.parent if not path.exists() else path)
        if existing.exists() and not existing.is_dir() and existing != path:
            raise OutputError(f"{where}: {existing} is a file, so no folder can be made under it")
        folder = existing if existing.is_dir() else existing.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{where}: cannot write into {folder} (permission denied)")

    def file(self, path: str | Path | None, flag: str = "--output") -> Path | None:
        """Claim an output file (None: the option was not given)."""
        if path is None:
            return None
        path = Path(path)
        where = f"{flag} {path}" if flag else str(path)
        if path.is_dir():
            raise OutputError(f"{where}: is a directory; give a file path")
        self._check_common(path, flag)
        if path.exists() and not self.overwrite:
            raise OutputError(f"{where}: already exists; pass --overwrite to replace it, or choose another path")
        self.claimed.append((path, flag))
        return path

    def run_directory(self, path: str | Path, flag: str = "--output-dir") -> Path:
        """Claim a run directory: a path that is a directory or can become one. Whether an existing one may be
        continued is the run directory's own rule (rundir.check_run_dir: never overwritten, --resume continues)."""
        path = Path(path)
        where = f"{flag} {path}" if flag else str(path)
        if path.exists() and not path.is_dir():
            raise OutputError(f"{where}: is a file; give a directory path")
        self._check_common(path, flag)
        self.claimed.append((path, flag))
        return path

    def directory(self, path: str | Path, flag: str = "--output-dir") -> Path:
        """Claim an output directory: new, empty, or (with --overwrite) one whose files may be replaced."""
        path = Path(path)
        where = f"{flag} {path}" if flag else str(path)
        if path.exists() and not path.is_dir():
            raise OutputError(f"{where}: is a file; give a directory path")
        self._check_common(path, flag)
        if path.is_dir() and any(path.iterdir()) and not self.overwrite:
            raise OutputError(
                f"{where}: directory exists and is not empty; pass --overwrite to replace its files, or choose another"
            )
        self.claimed.append((path, flag))
        return path


# ---------------------------------------------------------------- atomic writes


def _temporary_sibling(path: Path, suffix: str = ".tmp") -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(name)


@contextlib.contextmanager
def open_atomic(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = ""
) -> Iterator:
    """A handle on a temporary sibling of `path`, renamed over `path` when the block ends without an error (and
    removed when it does not). Text mode writes `newline=""` by default: what is written is what lands."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    binary = "b" in mode
    try:
        with open(
            temporary, mode, encoding=None if binary else encoding, newline=None if binary else newline
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    with open_atomic(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with open_atomic(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int | str | None = 2) -> Path:
    """UTF-8 JSON without ASCII escapes (Korean stays readable), newline-terminated."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A UTF-8 CSV with "\\n" line ends (the competition files' form)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def write_dict_rows(path: str | Path, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Dict rows as a CSV; the columns are `fieldnames`, or every key in first-seen order."""
    columns = list(fieldnames or dict.fromkeys(key for row in rows for key in row))
    return write_csv(path, columns, ([row.get(c, "") for c in columns] for row in rows))


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log (metrics.jsonl): a kill can only cut the last line, which readers skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary sibling directory to fill; when the block ends without an error it replaces `path` (an old
    `path` is moved aside first and removed after), so `path` is always either the old complete directory or the new
    one. On an error the temporary directory is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    commit_directory(temporary, path)


def commit_directory(temporary: str | Path, path: str | Path) -> Path:
    """Put a completely written directory in place of `path`: an old `path` is moved aside first and removed after,
    so at every moment `path` is the old complete directory, nothing, or the new one."""
    temporary, path = Path(temporary), Path(path)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(temporary, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def save_figure(figure, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure as PNG, atomically."""
    path = Path(path)
    with open_atomic(path, "wb") as handle:
        figure.savefig(handle, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path
