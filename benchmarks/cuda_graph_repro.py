"""Repro of a stock CUDA-graph crash: an 8B-shaped model, a 2040-token prompt, then 32-token decodes to ~8k.

    python -m models.gguf_gen /tmp/8b.gguf --preset 8b --dtype q4_0 --n-ctx-train 16384
    python benchmarks/cuda_graph_repro.py /tmp/8b.gguf 0     # 0: plain llama.cpp context, 1: hogwild context

On an H200 (CUDA 13.0) both aborted with a CUDA error (ggml-cuda.cu:109). The same pattern inside
`hogwild bench` (8B, ctx 8192, W=1) logged "CUDA error: an illegal instruction was encountered" at
cudaGraphLaunch and finished with GGML_CUDA_DISABLE_GRAPHS=1 (benchmarks/RESULTS.md).
"""
import sys
from hogwild_cpp.native import Context, ContextConfig, Model
m = Model(sys.argv[1], n_gpu_layers=99)
hw = sys.argv[2] == "1"
ctx = Context(m, ContextConfig(n_ctx=8312, n_batch=512, n_seq_max=1, n_threads=4, hogwild=hw))
ctx.clear()
toks = [(i * 7919) % 30000 + 3 for i in range(8192)]
ctx.decode([(t, i, 0, False) for i, t in enumerate(toks[:2040])])
p = 2040
while p + 32 <= 8160:
    ctx.decode([(t, p + i, 0, i == 31) for i, t in enumerate(toks[p:p + 32])])
    p += 32
print(f"hogwild={int(hw)}: decoded up to {p} tokens without error")
