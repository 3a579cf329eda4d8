"""Blocks and views over one shared KV cache: the bookkeeping behind Hogwild! inference.

A *block* is a run of tokens stored once in the KV cache (prompt, a worker's step, a separator).
A *view* is the ordered list of blocks one worker (one llama.cpp sequence) sees. The same block
sits at a different position in each view; the patched llama.cpp lets a cell shared by several
sequences have a different position in each (patches/README.md), so moving a block in a view is
bookkeeping: no token is recomputed and no KV is copied.

Each block has a *canonical* start: the position its stored K is rotated for. Its *delta* in a
view is (start in that view - canonical start). Tokens are only ever appended to the last block
of the writer's own view (llama.cpp's rule: a sequence's next token follows its last position);
a writer's *tail* delta stores them for the block's canonical positions even after the block
moved in the writer's view, so a block keeps one delta in every view.

Same-step visibility (paper §3.1): the tokens one decode appends reach every view that holds their
block in that decode, before attention runs. Views are laid out with this step's growth included,
and each writer's new tokens are placed in the other views as they are stored (FOLLOW).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .native import Context, fold, follow, share, shift, tail

_PARK = 1 << 28  # a view position above every real one: blocks swapping places go there first


@dataclass
class Block:
    id: int
    kind: str                  # prompt | separator | step | finisher
    owner: str | None = None   # worker name, for traces
    tokens: list[int] = field(default_factory=list)
    writer: int | None = None  # the sequence that stores its cells
    canon: int = 0             # canonical position of tokens[0]


@dataclass
class _Placed:
    start: int   # view position of the block's first token in this sequence
    length: int  # how many of its tokens this sequence holds


class SharedCache:
    """W views (sequence ids 0..W-1) over one set of blocks in one llama.cpp context."""

    def __init__(self, ctx: Context, n_views: int):
        if n_views > ctx.cfg.n_seq_max:
            raise RuntimeError(f"{n_views} views need n_seq_max >= {n_views}")
        self.ctx = ctx
        self.blocks: dict[int, Block] = {}
        self.views: list[list[int]] = [[] for _ in range(n_views)]
        self._placed: list[dict[int, _Placed]] = [{} for _ in range(n_views)]
        self._tail = [0] * n_views
        self._following: set[int] = set()  # writers with followers set in the cache
        self._growing: dict[int, int] = {}  # during a decode: tokens each block is about to get
        # what the last sync applied: each view's block list (with an index), and the blocks that
        # grew since; a sync only looks at each view from its first changed block on
        self._synced: list[list[int]] = [[] for _ in range(n_views)]
        self._index: list[dict[int, int]] = [{} for _ in range(n_views)]
        self._grown: set[int] = set()
        self._set: set[int] = set()  # views given by set_view since the last sync: the others are as synced
        ctx.clear()

    # --- blocks and views ---------------------------------------------------

    def new_block(self, kind: str, owner: str | None = None) -> Block:
        b = Block(id=len(self.blocks), kind=kind, owner=owner)
        self.blocks[b.id] = b
        return b

    def set_view(self, seq: int, block_ids: list[int]) -> None:
        """The blocks sequence `seq` sees, in order; applied at the next decode (or `sync`)."""
        if len(set(block_ids)) != len(block_ids):
            raise RuntimeError("a block appears twice in one view")
        self.views[seq] = list(block_ids)
        self._set.add(seq)

    def materialize(self, seq: int) -> list[int]:
        """The token sequence of a view: what a fresh single-sequence decode would see."""
        return [t for b in self.views[seq] for t in self.blocks[b].tokens]

    def view_prefixes(self, seq: int) -> list[tuple[int, int]]:
        """(block id, length) of each block of the view, for traces."""
        return [(b, len(self.blocks[b].tokens)) for b in self.views[seq]]

    def view_length(self, seq: int) -> int:
        """Tokens in a view (the context its next token attends over)."""
        return sum(len(self.blocks[b].tokens) for b in self.views[seq])

    def used_cells(self) -> int:
        return self.ctx.used_cells()

    def unique_tokens(self) -> int:
        """Tokens of the blocks some view still holds: what the cache must store, once each."""
        held = {bid for placed in self._placed for bid, pl in placed.items() if pl.length}
        return sum(len(self.blocks[bid].tokens) for bid in held)

    # --- applying views to the cache ----------------------------------------

    def _len(self, bid: int) -> int:
        """A block's length for laying out views: with the tokens the current decode appends."""
        return len(self.blocks[bid].tokens) + self._growing.get(bid, 0)

    def sync(self, defer: bool = False) -> list:
        """Make the cache match the views: park unseen blocks, move, share, drop, fold, set tails.

        defer: return the last operations instead of applying them (the caller adds its own and applies
        them in one native call); the bookkeeping is done either way.

        Unseen blocks are dropped only after the shares, so a block can pass from one view to another.
        Each view is looked at only from its first block that changed (joined, left or grew) since
        the last sync, so a decode step costs O(W²) here, not O(W · blocks).
        """
        ops: list[tuple[int, int, int, int, int, int]] = []
        moved: set[int] = set()
        dropping = []
        changed = [seq in self._set and view != self._synced[seq] for seq, view in enumerate(self.views)]
        touched = self._grown | self._growing.keys()
        first = [self._first_change(seq, view, changed[seq], touched) for seq, view in enumerate(self.views)]
        for seq, view in enumerate(self.views):
            if changed[seq]:
                dropping += self._park_unseen(seq, view, ops)
            moved |= self._move(seq, view, first[seq], ops)
        for seq, view in enumerate(self.views):
            moved |= self._share(seq, view, first[seq], ops)
        if dropping:  # the drops are stock removals: they go between the shares and the folds
            self.ctx.apply(ops)
            ops = []
        for seq, bid in dropping:
            pl = self._placed[seq].pop(bid)
            self.ctx.seq_rm(seq, pl.start, pl.start + pl.length)
        self._fold(moved, ops)
        for seq, view in enumerate(self.views):
            tail_delta = self._tail_of(seq, view)
            if tail_delta != self._tail[seq]:
                ops.append(tail(seq, tail_delta))
                self._tail[seq] = tail_delta
        for seq, view in enumerate(self.views):
            if changed[seq]:
                self._synced[seq] = list(view)
                self._index[seq] = dict(zip(view, range(len(view))))
        self._grown.clear()
        self._set.clear()
        if defer:
            return ops
        self.ctx.apply(ops)
        return []

    def _first_change(self, seq: int, view: list[int], changed: bool, touched: set[int]) -> int:
        """Index of the first block of `view` whose place or length may differ from the last sync
        (`touched`: the blocks that grew since, or grow in this decode)."""
        old, index = self._synced[seq], self._index[seq]
        first = _common_prefix(view, old) if changed else len(view)
        for bid in touched:
            i = index.get(bid)
            if i is not None and i < first:
                first = i
        return first

    def _start_at(self, seq: int, view: list[int], i: int) -> int:
        """View position of the block at index i, when every block before it is in place."""
        if i == 0:
            return 0
        prev = view[i - 1]
        return self._placed[seq][prev].start + self._len(prev)

    def _park_unseen(self, seq: int, view: list[int], ops) -> list[tuple[int, int]]:
        placed, out = self._placed[seq], []
        gone = placed.keys() - set(view)  # a set difference in C: a view that changed seldom drops a block
        for bid in [b for b in placed if b in gone] if gone else ():
            pl = placed[bid]
            if not pl.length:
                del placed[bid]
                continue
            ops.append(shift(seq, pl.start, pl.start + pl.length, 2 * _PARK))
            pl.start += 2 * _PARK
            out.append((seq, bid))
        return out

    def _move(self, seq: int, view: list[int], first: int, ops) -> set[int]:
        if first >= len(view):
            return set()
        # every step runs this loop over each view's changed end: _len inlined, lookups local
        placed, blocks, growing, moving = self._placed[seq], self.blocks, self._growing, []
        pos = self._start_at(seq, view, first)
        for bid in view[first:]:
            pl = placed.get(bid)
            if pl is not None and pl.start != pos:
                moving.append((bid, pl, pos))
            pos += len(blocks[bid].tokens) + growing.get(bid, 0)
        held = [(pl, new) for _, pl, new in moving if pl.length]
        right = [new > pl.start for pl, new in held]
        if all(right) or not any(right):
            # all one way (blocks pushed along by a growing block before them): shift each once, the
            # block furthest in that direction first, so no range picks up cells already moved
            held.sort(key=lambda m: m[0].start, reverse=all(right))
            for pl, new in held:
                ops.append(shift(seq, pl.start, pl.start + pl.length, new - pl.start))
        else:
            # park first, then place: old and new ranges may overlap in any order
            for pl, _ in held:
                ops.append(shift(seq, pl.start, pl.start + pl.length, _PARK))
            for pl, new in held:
                ops.append(shift(seq, pl.start + _PARK, pl.start + _PARK + pl.length, new - pl.start - _PARK))
        for _, pl, new in moving:
            pl.start = new
        return {bid for bid, _, _ in moving}

    def _share(self, seq: int, view: list[int], first: int, ops) -> set[int]:
        placed, grown = self._placed[seq], set()
        if first >= len(view):
            return grown
        blocks, growing = self.blocks, self._growing
        pos = self._start_at(seq, view, first)
        for bid in view[first:]:
            n = len(blocks[bid].tokens)
            pl = placed.get(bid)
            if pl is None:  # a block the view just took in (a _Placed only then: this loop runs every step)
                pl = placed[bid] = _Placed(start=pos, length=0)
            if pl.length < n:
                src = self._holder(bid, seq)
                spl = self._placed[src]
                lo, hi = spl[bid].start + pl.length, spl[bid].start + n
                ops.append(share(src, seq, lo, hi, pl.start - spl[bid].start))
                pl.length = n
                grown.add(bid)
            pos += n + growing.get(bid, 0)
        return grown

    def _holder(self, bid: int, exclude: int) -> int:
        n = len(self.blocks[bid].tokens)
        w = self.blocks[bid].writer
        if w is not None and w != exclude and self._placed[w].get(bid, _Placed(0, 0)).length == n:
            return w
        for s, placed in enumerate(self._placed):
            if s != exclude and bid in placed and placed[bid].length == n:
                return s
        raise RuntimeError(f"block {bid}: no sequence holds its cells any more")

    def _fold(self, candidates: set[int], ops) -> None:
        """A delta that every holder of a block shares is folded into its stored K: then every view
        sees the block where it is stored, and attention needs no per-view copy of it."""
        for bid in candidates:  # every step: stop at the first holder whose delta differs (most do, early)
            b, first, d = self.blocks[bid], None, 0
            for s, placed in enumerate(self._placed):
                pl = placed.get(bid)
                if pl is None or not pl.length:
                    continue
                if first is None:
                    first, d = (s, pl), pl.start - b.canon
                elif pl.start - b.canon != d:
                    break
            else:
                if first is not None and d != 0:
                    s, pl = first
                    ops.append(fold(s, pl.start, pl.start + pl.length))
                    b.canon += d

    def _tail_of(self, seq: int, view: list[int]) -> int:
        if not view:
            return 0
        b = self.blocks[view[-1]]
        if b.writer is None:
            return 0
        return self._placed[seq][b.id].start - b.canon

    # --- decoding -----------------------------------------------------------

    def decode(self, appends: dict[int, list[int]], heads: dict[int, list[int]] | None = None,
               copy_logits: bool = True) -> dict[int, np.ndarray | int]:
        """Append tokens to the last block of each given view, in one batched decode.

        Every view that holds a block being appended to sees its new tokens in this same decode, at
        its own positions (same-step visibility); a view's own new tokens come after them.
        `heads[seq]`, if given, goes first into the block before the last, which must then be
        empty: a separator and the step it introduces, written in one batch and adjacent.
        Returns each view's logits after its last new token (copy_logits=False: its output index in the
        context's last decode, for Context.sample / Context.logits). The step's cache operations go to
        llama.cpp in one call (two when a block leaves a view).
        """
        appends = {seq: toks for seq, toks in appends.items() if toks}
        heads = {seq: h for seq, h in (heads or {}).items() if h and seq in appends}
        for seq in heads:
            if len(self.views[seq]) < 2 or self.blocks[self.views[seq][-1]].tokens:
                raise RuntimeError(f"view {seq}: a head goes before an empty last block")
        writes = []  # (seq, block, tokens, wants logits)
        for seq, toks in appends.items():
            view = self.views[seq]
            if seq in heads:
                writes.append((seq, self.blocks[view[-2]], heads[seq], False))
            writes.append((seq, self.blocks[view[-1]], toks, True))
        for seq, b, _, _ in writes:
            if b.writer is not None and b.writer != seq:
                raise RuntimeError(f"block {b.id} is written by sequence {b.writer}, not {seq}")
        n_new = sum(len(t) for _, _, t, _ in writes)
        if n_new > self.ctx.cfg.n_batch and len(appends) > 1:  # llama.cpp would split it into ubatches
            raise RuntimeError(f"one step of {n_new} tokens exceeds n_batch ({self.ctx.cfg.n_batch}): "
                               "the workers would not see each other's tokens")
        self._growing = {b.id: len(t) for _, b, t, _ in writes}
        try:
            ops = self.sync(defer=True)
            for seq, b, _, _ in writes:
                if b.writer is None:  # a new block is stored where its writer sees it
                    b.writer, b.canon = seq, self._placed[seq][b.id].start - self._tail[seq]
            follow_ops, followers = self._follow(appends, heads)
            self.ctx.apply(ops + follow_ops)
        finally:
            self._growing = {}
        items = []
        for seq, b, ts, wants_logits in writes:
            pos0 = self._placed[seq][b.id].start + len(b.tokens)
            items += [(t, pos0 + i, seq, wants_logits and i == len(ts) - 1)
                      for i, t in enumerate(ts)]
        try:
            logits = self.ctx.decode(items, copy_logits=copy_logits)
        except BaseException:
            self._grown |= {b.id for _, b, _, _ in writes}  # the views were laid out for tokens that did not come
            raise
        out, k = {}, 0
        for seq, b, ts, wants_logits in writes:
            b.tokens.extend(ts)
            for s in [seq, *followers.get(seq, ())]:
                self._placed[s][b.id].length = len(b.tokens)
            self._grown.add(b.id)
            if wants_logits:
                out[seq] = logits[k]
                k += 1
        return out

    def _follow(self, appends: dict[int, list[int]], heads: dict[int, list[int]]):
        """Which views see each writer's new tokens, and where: (the FOLLOW operations, the followers).

        A view follows a writer when it holds the block being appended to (and the head block, at the
        same offset): the new tokens go there at the view's positions as they are stored.
        """
        ops, followers = [], {}
        for seq in sorted(self._following | appends.keys()):
            ops.append(follow(seq))
        for seq in sorted(appends):
            view = self.views[seq]
            blocks = view[-2:] if seq in heads else view[-1:]
            mine = [(b, self._placed[seq][b].start, len(self.blocks[b].tokens)) for b in blocks]
            for s, placed in enumerate(self._placed):
                # W writers x W views every step: one plain loop, no generator or set per pair
                if s == seq:
                    continue
                delta = None
                for b, start, n in mine:
                    pl = placed.get(b)
                    if pl is None or pl.length != n or delta is not None and pl.start - start != delta:
                        break
                    delta = pl.start - start
                else:
                    if delta is not None:
                        ops.append(follow(seq, s, delta))
                        followers.setdefault(seq, []).append(s)
        self._following = set(followers)
        return ops, followers


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading items `a` and `b` share. A view's blocks before its first change (a committed
    step joins the history, deep in every view) are compared a slice at a time, not a Python loop
    over the whole history."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
