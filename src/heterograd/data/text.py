"""Character-level text corpora for language modelling: ``text:PATH`` and ``pystdlib``.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = p.write_text("abcab" * 200, encoding="utf-8")
>>> c = load_text(f"text:{p}", block=8)
>>> c.vocab[:3], c.train.shape, c.val.shape, c.test.shape
(('<unk>', 'a', 'b'), torch.Size([900]), torch.Size([50]), torch.Size([50]))

- ``text:PATH``: one UTF-8 file, or a folder whose ``.txt``, ``.py`` and ``.md`` files (searched recursively)
  are read in sorted order of their paths relative to the folder and concatenated as they are.
- ``pystdlib`` or ``pystdlib:MB``: the running Python's standard-library sources, the ``.py`` files under
  ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` and ``dist-packages`` left out) in sorted order of
  their relative paths, concatenated and cut after the first ``MB`` MiB (default `PYSTDLIB_MB`; the cut
  falls back to the last whole character). Files that are not UTF-8 (the standard library's test suite holds a
  few on purpose) are skipped and counted. The corpus differs between Python versions, so its SHA-256 and
  the Python version are recorded (`TextCorpus.source`).

The text is split by position into contiguous parts: the first `SPLITS` ``[0]`` = 90 % of the characters
train, the next 5 % validate, the last 5 % test. The vocabulary is the sorted set of characters of the
training part, after token 0, ``<unk>``: a validation or test character that never occurs in the training part
becomes token 0 (counted in `TextCorpus.unknown`); as an input it reads as ``<unk>``, as a target it is
left out of the loss (`IGNORE`), so bits per character are over the known
characters and the count of the others is reported beside them.

Training batches are random windows (`random_windows`): ``block`` characters starting at offsets drawn
uniformly from a seeded ``torch.Generator``, with the next ``block`` characters as targets. Evaluation reads
the non-overlapping windows of a part in order (`windows`).
"""

from __future__ import annotations

import hashlib
import math
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import HeterogradError
from .sequences import IGNORE

#: ``text:<path>``: a UTF-8 file or a folder of text files.
TEXT_PREFIX = "text:"
#: the built-in corpus: the running Python's standard-library sources.
PYSTDLIB = "pystdlib"
#: MiB of the standard library that ``pystdlib`` reads when no size is given.
PYSTDLIB_MB = 2.0
#: suffixes of the files a folder contributes.
TEXT_SUFFIXES: tuple[str, ...] = (".md", ".py", ".txt")
#: fractions of the characters in the train, validation and test parts (contiguous, in this order).
SPLITS: tuple[float, float, float] = (0.90, 0.05, 0.05)
#: the token of a character that the training part does not contain.
UNK = "<unk>"
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def is_text_data(name: object) -> bool:
    """Whether ``name`` names a text corpus (``text:PATH``, ``pystdlib`` or ``pystdlib:MB``)."""
    return isinstance(name, str) and (name.startswith(TEXT_PREFIX) or name.split(":")[0] == PYSTDLIB)


@dataclass(frozen=True)
class TextCorpus:
    """A tokenised corpus.

    Attributes:
        name: the data name it was loaded from.
        vocab: ``(V,)`` token strings; ``vocab[0]`` is ``<unk>``, then the training part's characters, sorted.
        train, val, test: ``(N_part,)`` int64 token ids, contiguous parts of the text in this order.
        unknown: ``{"val": k, "test": k}``, characters of those parts mapped to ``<unk>``.
        source: what was read: ``kind`` (file, folder, pystdlib), ``path``, ``files``, ``bytes``, ``sha256`` of the
            bytes read, ``characters``; for ``pystdlib`` also ``python`` (version), ``megabytes`` and ``skipped``
            (files not in UTF-8).
    """

    name: str
    vocab: tuple[str, ...]
    train: Tensor
    val: Tensor
    test: Tensor
    unknown: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """``V``, the number of tokens (the model's output width)."""
        return len(self.vocab)

    def encode(self, text: str) -> Tensor:
        """``(len(text),)`` token ids; a character outside the vocabulary is a clear error."""
        index = {ch: i for i, ch in enumerate(self.vocab)}
        missing = sorted({ch for ch in text if ch not in index or index[ch] == 0})
        if missing:
            shown = ", ".join(repr(ch) for ch in missing[:5])
            raise HeterogradError(
                f"character(s) {shown} are not in the vocabulary of {self.vocab_size - 1} characters this run "
                "learned; use only characters of its training text"
            )
        return torch.tensor([index[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of token ids (``<unk>`` prints as U+FFFD)."""
        values = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join("\ufffd" if i == 0 else self.vocab[i] for i in values)


def vocab_record(corpus: TextCorpus) -> dict[str, Any]:
    """What ``vocab.json`` in a run folder holds: the tokens, the unknown token and how many characters it took."""
    return {
        "tokens": list(corpus.vocab),
        "unknown_token": 0,
        "unknown_characters": dict(corpus.unknown),
        "splits": {"train": SPLITS[0], "val": SPLITS[1], "test": SPLITS[2]},
        "characters": {"train": int(corpus.train.numel()), "val": int(corpus.val.numel()),
                       "test": int(corpus.test.numel())},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------- reading
def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text of ``raw``; an empty, binary or undecodable input is one clear error naming ``where``."""
    if not raw:
        raise HeterogradError(f"{where} is empty; pass a UTF-8 text file with some text in it")
    if b"\x00" in raw[:65536]:
        raise HeterogradError(f"{where} looks binary (it holds NUL bytes); pass a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeterogradError(
            f"{where} is not UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "convert it (e.g. iconv -t UTF-8) or pass another file"
        ) from None


def _read_path(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.exists():
        raise HeterogradError(f"--data text:{path}: no such file or folder; pass an existing UTF-8 file or folder")
    if path.is_file():
        raw = path.read_bytes()
        text = _decode(raw, f"--data text:{path}")
        return text, {"kind": "file", "path": str(path), "files": 1, "bytes": len(raw),
                      "sha256": hashlib.sha256(raw).hexdigest()}  # fmt: skip
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise HeterogradError(
            f"--data text:{path}: the folder holds no {', '.join(TEXT_SUFFIXES)} files; pass a file or another folder"
        )
    h = hashlib.sha256()
    parts, total = [], 0
    for p in files:
        raw = p.read_bytes()
        if not raw:
            continue  # an empty file adds nothing (e.g. __init__.py)
        parts.append(_decode(raw, f"--data text:{path}: file {p.relative_to(path)}"))
        h.update(raw)
        total += len(raw)
    if not total:
        raise HeterogradError(f"--data text:{path}: every text file in the folder is empty; pass one with text")
    return "".join(parts), {"kind": "folder", "path": str(path), "files": len(files), "bytes": total,
                            "sha256": h.hexdigest()}  # fmt: skip


def stdlib_dir() -> Path:
    """The running Python's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _read_pystdlib(megabytes: float) -> tuple[str, dict[str, Any]]:
    root = stdlib_dir()
    files = sorted(
        (p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    limit = int(megabytes * 2**20)
    chunks, total, used, skipped = [], 0, 0, 0
    for p in files:
        if total >= limit:
            break
        try:
            raw = p.read_bytes()
            raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        if b"\x00" in raw:
            skipped += 1
            continue
        chunks.append(raw)
        total += len(raw)
        used += 1
    data = b"".join(chunks)[:limit]
    text = data.decode("utf-8", errors="ignore")  # only a character cut in two at the end can be dropped
    data = text.encode("utf-8")
    if not text:
        raise HeterogradError(f"--data pystdlib: no readable .py files under {root}; pass --data text:PATH instead")
    return text, {
        "kind": "pystdlib",
        "path": str(root),
        "python": platform.python_version(),
        "megabytes": megabytes,
        "files": used,
        "skipped": skipped,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_text_source(name: str) -> tuple[str, dict[str, Any]]:
    """The raw text of a data name and a record of what was read (see `TextCorpus`.source)."""
    if name.startswith(TEXT_PREFIX):
        spec = name[len(TEXT_PREFIX) :]
        if not spec:
            raise HeterogradError("--data text: needs a path, e.g. --data text:corpus.txt or --data text:docs/")
        return _read_path(Path(spec).expanduser())
    base, _, size = name.partition(":")
    if base != PYSTDLIB:
        raise HeterogradError(f"{name!r} is not a text corpus; pass text:PATH or pystdlib[:MB]")
    mb = PYSTDLIB_MB
    if size:
        try:
            mb = float(size)
        except ValueError:
            mb = math.nan
        if not math.isfinite(mb) or mb <= 0:
            raise HeterogradError(f"--data {name}: the size must be a positive number of MiB, e.g. pystdlib:2")
    return _read_pystdlib(mb)


def load_text(name: str, *, block: int) -> TextCorpus:
    """Read, split and tokenise a text corpus for windows of ``block`` characters.

    Args:
        name: ``text:PATH``, ``pystdlib`` or ``pystdlib:MB`` (see the module docstring).
        block: characters per window; every part must hold at least ``block + 1`` characters.

    Returns:
        A `TextCorpus`.

    Raises:
        HeterogradError: missing path, empty / binary / non-UTF-8 input, a block longer than a part.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise HeterogradError(f"block must be a positive integer, got {block!r}; e.g. block=128")
    text, source = read_text_source(name)
    n = len(text)
    a, b = int(n * SPLITS[0]), int(n * (SPLITS[0] + SPLITS[1]))
    parts = {"train": text[:a], "val": text[a:b], "test": text[b:]}
    for part, s in parts.items():
        if len(s) < block + 1:
            need = math.ceil((block + 1) / min(SPLITS))
            raise HeterogradError(
                f"--data {name}: block {block} is longer than the {part} part ({len(s)} of {n} characters; "
                f"splits {SPLITS[0]:.0%}/{SPLITS[1]:.0%}/{SPLITS[2]:.0%}); pass a smaller block (model option "
                f"block=...) or at least {need} characters of text"
            )
    chars = sorted(set(parts["train"]))
    vocab = (UNK, *chars)
    index = {ch: i for i, ch in enumerate(vocab)}

    def encode(s: str) -> tuple[Tensor, int]:
        ids = [index.get(ch, 0) for ch in s]
        return torch.tensor(ids, dtype=torch.long), sum(1 for i in ids if i == 0)

    train, _ = encode(parts["train"])
    val, unk_val = encode(parts["val"])
    test, unk_test = encode(parts["test"])
    source = {**source, "characters": n}
    return TextCorpus(name, vocab, train, val, test, {"val": unk_val, "test": unk_test}, source)


# ------------------------------------------------------------------------------------------------- batches
def targets_of(ids: Tensor) -> Tensor:
    """Next-token targets: ``ids`` with ``<unk>`` (token 0) replaced by `IGNORE` (no loss there)."""
    return ids.masked_fill(ids == 0, IGNORE)


def random_windows(tokens: Tensor, batch: int, block: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A batch of random windows: inputs ``(batch, block)`` and their next-token targets ``(batch, block)``.

    Offsets are uniform over ``[0, N - block - 1]`` (``N = len(tokens)``), drawn from ``generator``.
    """
    n = tokens.shape[0]
    if n < block + 1:
        raise HeterogradError(f"{n} tokens cannot hold a window of {block} characters plus its target")
    start = torch.randint(0, n - block, (batch,), generator=generator).to(tokens.device)
    idx = start[:, None] + torch.arange(block + 1, device=tokens.device)[None, :]
    w = tokens[idx]
    return w[:, :-1], targets_of(w[:, 1:])


def windows(tokens: Tensor, block: int, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """The non-overlapping windows of a part in order: inputs and targets ``(W, block)``.

    Window ``i`` reads ``tokens[i·block : (i+1)·block]`` and predicts the next character at every position;
    ``limit`` keeps only the first ``limit`` windows.
    """
    count = (tokens.shape[0] - 1) // block
    if limit is not None:
        count = min(count, limit)
    x = tokens[: count * block].view(count, block)
    y = tokens[1 : count * block + 1].view(count, block)
    return x, targets_of(y)


__all__ = [
    "PYSTDLIB",
    "PYSTDLIB_MB",
    "SPLITS",
    "TEXT_PREFIX",
    "UNK",
    "TextCorpus",
    "is_text_data",
    "load_text",
    "random_windows",
    "read_text_source",
    "stdlib_dir",
    "targets_of",
    "vocab_record",
    "windows",
]
