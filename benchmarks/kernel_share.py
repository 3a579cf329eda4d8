"""What the GPU does in one decode step: the bench's stock batched and hogwild steps (hogwild_cpp.bench),
their CUDA kernels grouped by kind, GPU ms a step and the share of each kind (CUPTI through
torch.profiler, in this process; CUDA build and PyTorch needed).

    python benchmarks/kernel_share.py MODEL [-np 1,2,4,8] [-d 2048] [-ngl 99] [-fa on] [--steps 20]

Issue 16 asks what part of the batched step is the quantized mat-vec kernel (mul_mat_vec_q): the
kernel the stock ratio W·single/batched rests on.
"""

import argparse
import random
import statistics
import time

from hogwild_cpp import bench
from hogwild_cpp.cache import SharedCache
from hogwild_cpp.native import Context, Model

# kernel name prefixes, first match wins
KINDS = [("mul_mat_vec_q", "mat-vec (quantized)"), ("mul_mat_q", "mat-mat (quantized, mmq)"),
         ("mul_mat_vec", "mat-vec (float)"), ("quantize", "quantize activations"),
         ("flash_attn", "flash attention"), ("soft_max", "softmax"), ("rope", "rope"), ("k_set_rows", "set_rows"),
         ("k_get_rows", "get_rows"), ("k_copy_rows", "copy rows (shadow V)"), ("rms_norm", "rms_norm"),
         ("cutlass", "cuBLAS/cutlass"), ("gemm", "cuBLAS gemm"), ("gemv", "cuBLAS gemv")]


def kind(name: str) -> str:
    for prefix, label in KINDS:
        if name.startswith(prefix) or f" {prefix}" in name or f"::{prefix}" in name:
            return label
    return "other"


def grouped(prof: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in prof["top"]:
        out[kind(k["name"])] = out.get(kind(k["name"]), 0.0) + k["ms"]
    out["(not in the top 40)"] = prof["gpu_ms"] - sum(out.values())
    return out


def host_before_decode(step, steps: int) -> float:
    """Median ms from the start of a step to its call of llama_decode (the host work the GPU waits for, apart
    from llama_decode's own: the hogwild plan and the masks, inside the wall time only)."""
    plain, marks = Context.decode, []

    def marked(ctx, items, copy_logits=True):
        marks.append(time.perf_counter())
        return plain(ctx, items, copy_logits=copy_logits)

    Context.decode = marked
    try:
        times = []
        for _ in range(steps):
            marks.clear()
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (marks[0] - t0))
    finally:
        Context.decode = plain
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-np", "--workers", default="1,2,4,8")
    ap.add_argument("-d", "--depth", type=int, default=2048)
    ap.add_argument("-ngl", "--gpu-layers", type=int, default=99)
    ap.add_argument("-fa", "--flash-attn", default="on")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    model = Model(a.model, n_gpu_layers=a.gpu_layers)
    rng = random.Random(0)
    for w in map(int, a.workers.split(",")):
        for label, setup in (("batched", bench.batched_setup), ("hogwild", bench.hogwild_setup)):
            step, obj = setup(model, w, a.depth, a.steps, 0, rng, a.flash_attn)
            ms = bench._median_ms(step, a.steps)
            before = host_before_decode(step, a.steps)
            prof = bench.kernel_profile(step)
            (obj.ctx if isinstance(obj, SharedCache) else obj).close()
            if prof is None:
                raise SystemExit("no kernel profile: a CUDA build and PyTorch are needed")
            parts = sorted(grouped(prof).items(), key=lambda kv: -kv[1])
            print(f"W={w} {label}: wall {ms:.3f} ms, GPU {prof['gpu_ms']:.3f} ms, {prof['kernels']:.0f} kernels; "
                  f"before the decode call (Python, cache operations) {before:.3f} ms")
            for name, gms in parts:
                if gms > 0.005:
                    print(f"    {name:28s} {gms:7.3f} ms  {100 * gms / prof['gpu_ms']:5.1f}%")
    model.close()


if __name__ == "__main__":
    main()
