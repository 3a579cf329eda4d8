"""The JSONL trace: what was sampled, from which exact view. Anyone can replay it (docs/trace.md).

One JSON object a line:
  header  the run's settings (`header`)
  token   a sampled token and the exact view it was sampled from (`token`)
  block   every block's final tokens, once, at the end (`end`)
  end     why the run stopped, and the answer (`end`)
This module writes and reads them; nothing else builds a record.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

VERSION = 2  # 2: block kinds of the protocol's layouts, protocol and thinking in the header, answer source


def logprob(logits: np.ndarray, token: int) -> float:
    """The model's log-probability of `token` (a pass over the vocabulary: only for traces)."""
    m = float(logits.max())
    return float(logits[token] - m - math.log(float(np.exp(logits - m).sum())))


class TraceWriter:
    """Writes to a temporary file of its own next to FILE (.FILE.XXXX.tmp) as the run goes and renames
    it to FILE when closed: no half-written file, and two runs given the same FILE never share one.

    A write that fails (a full disk, a file size limit) does not stop the run: the trace is dropped,
    its temporary file removed, and the reason kept in `error` for the caller to report.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        self.f = open(fd, "w", encoding="utf-8")
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # as a file opened for writing would be (mkstemp makes it 0600)
        self.error: OSError | None = None

    def header(self, *, model: str, n_ctx: int, workers: list[str], layout: str, seed: int, sampling: dict,
               suppressed: list[int], flash_attn: bool, cache_types: list[str], protocol: dict,
               instructions_in: str, check_every: int, finisher_tokens: int, thinking: dict | None) -> None:
        self.write({"type": "header", "version": VERSION, "model": model, "n_ctx": n_ctx, "workers": workers,
                    "layout": layout, "seed": seed, "sampling": sampling, "suppressed": suppressed,
                    "flash_attn": flash_attn, "cache_types": cache_types, "protocol": protocol,
                    "instructions_in": instructions_in, "check_every": check_every,
                    "finisher_tokens": finisher_tokens, "thinking": thinking})

    def token(self, step: int | None, worker: str | None, view: list[tuple[int, int]], token: int,
              logits: np.ndarray, text: str | None = None) -> None:
        """A sampled token; `view`: (block id, tokens of it) of the view it was sampled from, in order;
        `text`: its piece, for reading (the token id is what replays). Finisher tokens have no step and no worker."""
        rec = {"type": "token", "step": step, "worker": worker, "view": [[b, n] for b, n in view],
               "token": token, "logprob": logprob(logits, token)}
        if text is not None:
            rec["text"] = text
        self.write(rec)

    def end(self, blocks, reason: str, answer: str | None, answer_source: str | None = None,
            answer_worker: str | None = None) -> None:
        """Every block with tokens (`blocks`: cache Blocks), the end record, and the file renamed into place.
        `answer_source`: "worker" (written by `answer_worker`) or "finisher" (forced at the budget)."""
        for b in blocks:
            if b.tokens:
                self.write({"type": "block", "id": b.id, "kind": b.kind, "owner": b.owner, "tokens": b.tokens})
        self.write({"type": "end", "reason": reason, "answer": answer, "answer_source": answer_source,
                    "answer_worker": answer_worker})
        self.close()

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
