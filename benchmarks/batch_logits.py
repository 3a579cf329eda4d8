"""Logits of small batches, written to a file so that two builds can be compared bit for bit: a check for
kernel patches that must not change results (`gpu_check.sh ab` runs it after each build).

    python benchmarks/batch_logits.py OUT.npz [-ngl 99]      one decode of 1, 2, ... 9 tokens each
    python benchmarks/batch_logits.py --compare A.npz B.npz   exit 1 unless every array is equal

The model is generated (Q4_0, 1001 vocabulary rows: a count no block of 2 or 4 rows divides), so the quantized
mat-vec kernel runs for every column count it takes (1-8) and MMQ for 9.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from hogwild_cpp.native import Context, ContextConfig, Model
from models.gguf_gen import write_llama_gguf

BATCHES = range(1, 10)


def dump(out: str, n_gpu_layers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_llama_gguf(Path(tmp) / "q4.gguf", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=352,
                                n_vocab=1001, dtype="q4_0", seed=3)
        model = Model(str(path), n_gpu_layers=n_gpu_layers)
        arrays = {}
        for k in BATCHES:
            ctx = Context(model, ContextConfig(n_ctx=64, n_batch=16, hogwild=False))
            tokens = [(7 * i + 11 * k) % 1001 for i in range(k)]
            arrays[f"tokens{k}"] = np.stack(ctx.decode([(t, i, 0, True) for i, t in enumerate(tokens)]))
            ctx.close()
        model.close()
    np.savez(out, **arrays)
    print(f"batch_logits: {out}: batches of {BATCHES.start}-{BATCHES.stop - 1} tokens")


def compare(a: str, b: str) -> bool:
    try:
        za, zb = np.load(a), np.load(b)
    except (OSError, ValueError) as e:
        print(f"batch_logits: cannot compare: {e}")
        return False
    same = True
    for key in sorted(set(za.files) | set(zb.files), key=lambda k: (len(k), k)):
        if key not in za.files or key not in zb.files:
            print(f"  {key}: only in {'A' if key in za.files else 'B'}")
            same = False
            continue
        equal = np.array_equal(za[key], zb[key])
        diff = "" if equal else f", max |A-B| {float(np.abs(za[key] - zb[key]).max()):.3g}"
        print(f"  {key}: {'equal' if equal else 'DIFFERENT'}{diff}")
        same &= equal
    print(f"batch_logits: {a} and {b} {'are equal bit for bit' if same else 'differ'}")
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--compare", action="store_true", help="compare two files written before")
    ap.add_argument("-ngl", "--gpu-layers", type=int, default=99)
    a = ap.parse_args()
    if a.compare:
        if len(a.files) != 2:
            ap.error("--compare takes two files")
        sys.exit(0 if compare(*a.files) else 1)
    if len(a.files) != 1:
        ap.error("one output file")
    dump(a.files[0], a.gpu_layers)


if __name__ == "__main__":
    main()
