"""Run directories: atomic writes of ``config.json``, ``metrics.csv`` and ``summary.json``.

Every file is written to a temporary sibling and moved into place with
``os.replace``, so a run killed at any moment leaves either the previous
complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import HeterogradError

_UMASK = os.umask(0)
os.umask(_UMASK)
#: Mode of written files: what ``open()`` would give (0o666 minus the umask), not mkstemp's 0o600.
_FILE_MODE = 0o666 & ~_UMASK


def _clean(obj: Any) -> Any:
    """Make floats JSON-safe (NaN/inf -> None) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp sibling of ``path`` for writing; on success fsync it and ``os.replace`` it into place.

    A crash or kill at any moment leaves either the old complete file or the new complete one.
    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON (NaN/inf become ``null``)."""
    atomic_write_text(path, json.dumps(_clean(dict(data)), indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Atomically write rows as CSV; columns are the union of row keys in first-seen order."""
    if columns is None:
        cols: dict[str, None] = {}
        for r in rows:
            for k in r:
                cols.setdefault(k, None)
        columns = list(cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV written by `write_csv` (values as strings)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def prepare_out_dir(out: str | os.PathLike[str]) -> Path:
    """Create the output folder (parents included); error clearly if it is a file."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise HeterogradError(f"--out {p} exists and is not a folder; pass a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeterogradError(f"cannot create output folder {p}: {exc.strerror}; pass a writable --out") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise HeterogradError(f"output folder {p} is not writable; pass a writable --out")
    return p


RUN_MARKERS = ("config.json", "checkpoint.pt", "summary.json", "metrics.csv")  # files a heterograd run writes


def prepare_run_dir(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The folder of a *new* run: created if missing; an existing one must be empty.

    A non-empty folder would mix the new run with an earlier one (its ``checkpoint.pt`` would later
    be resumed, its figures kept): it is an error unless ``overwrite``, which clears it first, and
    only if it looks like a run folder (holds one of `RUN_MARKERS`), so a mistyped ``--out .``
    never deletes anything else.
    """
    p = prepare_out_dir(out)
    entries = sorted(p.iterdir())
    if not entries:
        return p
    names = ", ".join(e.name for e in entries[:4]) + (", ..." if len(entries) > 4 else "")
    if not overwrite:
        resume = f", --resume {p} to continue the run in it" if (p / "checkpoint.pt").is_file() else ""
        raise HeterogradError(
            f"--out {p} is not empty ({names}); a new run there would mix with what it holds: pass --overwrite "
            f"to clear it{resume}, or choose another --out"
        )
    if not any((p / m).exists() for m in RUN_MARKERS):
        raise HeterogradError(
            f"--out {p} holds {names} but no heterograd run ({', '.join(RUN_MARKERS)}); --overwrite only clears run "
            "folders: choose another --out or empty it yourself"
        )
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()
    return p


def owner_marker(out: str | os.PathLike[str], owner: str) -> Path:
    """The marker file ``OUT/.heterograd-<owner>.json`` saying a command wrote ``out`` (see `prepare_owned_dir`)."""
    return Path(out) / f".heterograd-{owner}.json"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def prepare_owned_dir(
    out: str | os.PathLike[str], owner: str, entries: Sequence[str], *, overwrite: bool = False
) -> Path:
    """The output folder of a command that may run again in it (``heterograd demo``): replace its own output only.

    ``entries`` are the names (files or folders directly inside ``out``) the command writes. A new or empty
    folder is claimed: a marker file (`owner_marker`) listing ``entries`` is written before anything else.
    A folder holding that marker is this command's earlier output: the entries it lists are removed (other
    files a user put there stay) and the marker is rewritten. Any other non-empty folder is refused, so the
    command never touches a folder it did not write; ``overwrite`` also accepts one that holds only ``entries``
    whose folders are heterograd runs (an earlier output written before markers existed).

    Returns:
        The folder, ready for ``entries`` to be written.
    """
    bad = [e for e in entries if not e or e in (".", "..") or "/" in e or "\\" in e]
    if bad:
        raise ValueError(f"entries must be plain names inside the folder, got {bad}")
    p = prepare_out_dir(out)
    marker = owner_marker(p, owner)
    present = sorted(e.name for e in p.iterdir())
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text(encoding="utf-8"))["entries"]
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise HeterogradError(
                f"{marker} is unreadable, so heterograd cannot tell what it wrote in {p}; "
                "delete the folder yourself or choose another --out"
            ) from None
        remove = [n for n in listed if n in entries]  # never more than this command writes
    elif present:
        names = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        foreign = [n for n in present if n not in entries]
        not_runs = [n for n in present if (p / n).is_dir() and not any((p / n / m).exists() for m in RUN_MARKERS)]
        if not overwrite or foreign or not_runs:
            raise HeterogradError(
                f"--out {p} holds {names}, which `heterograd {owner}` did not write (no {marker.name}); "
                f"it only replaces its own output: choose a new or empty --out"
            )
        remove = present
    else:
        remove = []
    for name in remove:
        _remove(p / name)
    write_json(marker, {"owner": f"heterograd {owner}", "entries": list(entries)})
    return p
