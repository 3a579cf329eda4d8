"""The JSONL trace (DESIGN §6): what was sampled, from which exact view. Anyone can replay it."""

from __future__ import annotations

import json
import os
from pathlib import Path


class TraceWriter:
    """Writes to FILE.tmp as the run goes and renames it to FILE when closed: no half-written file.

    A write that fails (a full disk, a file size limit) does not stop the run: the trace is dropped,
    its temporary file removed, and the reason kept in `error` for the caller to report.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.error: OSError | None = None

    def write(self, record: dict) -> None:
        if self.f is None:
            return
        try:
            self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            self._drop(exc)

    def close(self) -> None:
        if self.f is None:
            return
        try:
            self.f.close()
            self.f = None
            self.tmp.replace(self.path)
        except OSError as exc:
            self._drop(exc)

    def discard(self) -> None:
        """An unfinished trace (the run failed): remove the temporary file, write nothing.
        Nothing to do once the trace is closed or dropped."""
        if self.f is not None:
            self._drop(None)

    def _drop(self, exc: OSError | None) -> None:
        self.error = exc
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass  # the buffered rest fails the same way
            self.f = None
        self.tmp.unlink(missing_ok=True)


def read_trace(path: str | os.PathLike) -> tuple[dict, dict[int, dict], list[dict], dict | None]:
    """(header, blocks by id, token records, end record)."""
    header, blocks, tokens, end = None, {}, [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            kind = rec["type"]
            if kind == "header":
                header = rec
            elif kind == "block":
                blocks[rec["id"]] = rec
            elif kind == "token":
                tokens.append(rec)
            elif kind == "end":
                end = rec
    return header, blocks, tokens, end


def view_tokens(blocks: dict[int, dict], view: list[list[int]]) -> list[int]:
    """The token sequence a record's view stands for: the concatenated block prefixes."""
    return [t for bid, n in view for t in blocks[bid]["tokens"][:n]]
