"""Reader for IDX files, the format of MNIST, Fashion-MNIST and their relatives.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then the data in row-major order and big-endian byte order. Files may be gzipped;
gzip is recognised by its own magic bytes, not by the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from heterograd.errors import HeterogradError

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The four files of an MNIST-style dataset: role -> conventional base name (without ``.gz``).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LISTED = 12


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_bytes(path: Path) -> bytes:
    """Return the file's bytes, gunzipped when the file is a gzip stream."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HeterogradError(f"IDX file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise HeterogradError(f"IDX path {path} is a directory, not a file; pass the file itself") from None
    except OSError as exc:
        raise HeterogradError(
            f"cannot read IDX file {path} ({_one_line(exc.strerror or exc)}); check the path and its permissions"
        ) from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise HeterogradError(
            f"corrupt gzip file {path} ({_one_line(exc)}); download it again or replace it with the uncompressed file"
        ) from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a numpy array.

    Args:
        path: the file to read.

    Returns:
        A writable array in native byte order with the shape given by the header, e.g. ``(N, 28, 28)``
        uint8 for ``*-images-idx3-ubyte`` and ``(N,)`` uint8 for ``*-labels-idx1-ubyte``.

    Raises:
        HeterogradError: the file is missing or unreadable, is a corrupt gzip stream, does not start
            with an IDX magic number, or holds a different number of data bytes than its header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise HeterogradError(
            f"truncated IDX file {path}: expected at least 4 header bytes, found {len(data)}; download it again"
        )
    zero0, zero1, code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        shown = " ".join(f"{b:02x}" for b in data[:4])
        codes = ", ".join(f"{c:02x}" for c in IDX_DTYPES)
        gz = " nor a gzip stream" if path.suffix.lower() == ".gz" else ""
        raise HeterogradError(
            f"wrong magic number {shown} in {path}: not an IDX file{gz} (IDX files start with "
            f"00 00 <type code {codes}> <ndim >= 1>); pass a raw or gzipped MNIST-style IDX file"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise HeterogradError(
            f"truncated IDX file {path}: a {ndim}-dimensional header needs {header_len} bytes, found "
            f"{len(data)}; download it again"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        kind = "truncated" if found < expected else "corrupt"
        raise HeterogradError(
            f"{kind} IDX file {path}: expected {expected} data bytes from the header (shape {shape}, "
            f"{dtype.itemsize}-byte {dtype.name}), found {found}; download it again"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _candidate_names(base: str) -> list[str]:
    """Accepted file names for one conventional base name, in order of preference."""
    dotted = base.replace("-idx", ".idx", 1)
    return [base, dotted, f"{base}.gz", f"{dotted}.gz"]


def find_idx_files(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the four MNIST-style IDX files in ``directory``.

    File names are matched case-insensitively against the conventional names (see `IDX_FILES`),
    with or without ``.gz`` and with ``-idx`` or ``.idx`` (``train-images.idx3-ubyte``). When a file is
    present both raw and gzipped, the raw one is used.

    Returns:
        ``{"train_images": path, "train_labels": path, "test_images": path, "test_labels": path}``.

    Raises:
        HeterogradError: the directory is missing, or any of the four files is (the message names the
            missing files and lists what the directory holds).
    """
    directory = Path(directory).expanduser()
    if not directory.exists():
        raise HeterogradError(
            f"dataset folder {directory} does not exist; pass idx:<dir> naming a folder with the four "
            "MNIST-style IDX files"
        )
    if not directory.is_dir():
        raise HeterogradError(
            f"dataset path {directory} is not a folder; pass idx:<dir> naming the folder that holds the four IDX files"
        )
    try:
        present = {p.name.lower(): p for p in sorted(directory.iterdir()) if p.is_file()}
    except OSError as exc:
        raise HeterogradError(
            f"cannot list dataset folder {directory} ({_one_line(exc.strerror or exc)}); check its permissions"
        ) from None
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, base in IDX_FILES.items():
        match = next((present[n] for n in _candidate_names(base) if n in present), None)
        if match is None:
            missing.append(f"{base}[.gz]")
        else:
            found[role] = match
    if missing:
        names = sorted(p.name for p in present.values())
        listing = ", ".join(_one_line(n) for n in names[:_MAX_LISTED])
        if len(names) > _MAX_LISTED:
            listing += f", ... ({len(names)} files)"
        raise HeterogradError(
            f"missing IDX file(s) {', '.join(missing)} in {directory} (found: {listing or 'no files'}); "
            "put the four MNIST-style files train-images/train-labels/t10k-images/t10k-labels there"
        )
    return found
