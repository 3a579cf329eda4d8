#!/usr/bin/env python3
"""Cross-implementation check: the paper's shared-cache loop and hogwild_cpp, same weights, same tokens.

A development script, not a test: it needs PyTorch, transformers and the paper's PyTorch code (the
`shared_cache` package of its repository), none of which CI has. Put the reference code in a folder
of your own, kept out of git (default `.anchor/hogwild_llm`), so that
`<impl>/shared_cache/{cache_block,combined_cache,shared_cache_manager}.py` exist; benchmarks/anchor.py
loads it (with its adapters for newer transformers releases).

What it does, for each worker count W (default 2 and 3):
  1. a random two-layer llama in transformers (f32, eager attention), written to a GGUF with the same
     weights (llama.cpp's Q/K row order); the two must agree on a plain forward (checked first);
  2. the reference: a prompt block, one block per worker; worker w's cache is [prompt + history,
     the other workers' blocks in order, its own block]; every step, one batched forward through
     SharedCacheManager, each worker feeding a forced token (the reference writes every worker's new
     token before any worker attends: same-step visibility); at step --commit-at, worker 0's block is
     appended to the prompt block and emptied, as the paper's generation loop does when a step ends;
  3. hogwild_cpp: the same blocks and views over one shared llama.cpp cache (SharedCache), the same
     forced tokens, the committed block moved into the history;
  4. each worker's logits at each step, compared: worst relative L2 and argmax agreement.

    python benchmarks/crosscheck.py --impl .anchor/hogwild_llm
    python benchmarks/crosscheck.py --impl .anchor/hogwild_llm --workers 2,3 --layers 2 --steps 24 --commit-at 12

Exit code 1 if the worst relative L2 exceeds --tol (default 1e-4).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def llama_cpp_order(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q or K projection in llama.cpp's RoPE pairing (adjacent) from transformers' (halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_pair(args, tmp: Path):
    """A random transformers llama and the same weights as a GGUF."""
    import gguf
    import torch
    import transformers

    from models import gguf_gen

    n_vocab = gguf_gen.N_BASE_VOCAB
    config = transformers.LlamaConfig(
        vocab_size=n_vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False)
    config._attn_implementation = "eager"
    torch.manual_seed(args.seed)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # sharper than the default init, so that a misplaced token shows
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, args.weight_std)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"],
               "output_norm.weight": sd["model.norm.weight"],
               "output.weight": sd["lm_head.weight"]}
    for i in range(args.layers):
        p = f"model.layers.{i}."
        tensors |= {
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.attn_q.weight": llama_cpp_order(sd[p + "self_attn.q_proj.weight"], args.heads),
            f"blk.{i}.attn_k.weight": llama_cpp_order(sd[p + "self_attn.k_proj.weight"], args.kv_heads),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    path = tmp / "crosscheck.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    gguf_gen.add_shape(writer, 2048, args.hidden, args.layers, 2 * args.hidden, args.heads, args.kv_heads)
    writer.add_rope_dimension_count(args.hidden // args.heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    gguf_gen.add_byte_vocabulary(writer, n_vocab)
    gguf_gen.write_all(writer, tensors, path)
    return model, path


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference_run(ref, model, prompt, tokens, commit_at):
    """The paper's classes driven as its generation loop drives them; logits [steps, W, vocab]."""
    import torch

    W = tokens.shape[0]
    config = model.config
    common = ref.CacheBlock(config=config)
    current = [ref.CacheBlock(config=config) for _ in range(W)]
    with torch.inference_mode():
        model(**ref.model_kwargs(ref.SharedCacheManager(cache_structure=[[common]]), torch.tensor([prompt])))
        manager = ref.SharedCacheManager(cache_structure=[
            [common, *(current[v] for v in range(W) if v != w), current[w]] for w in range(W)])
        out = []
        for step in range(tokens.shape[1]):
            logits = model(**ref.model_kwargs(manager, torch.tensor(tokens[:, step:step + 1]))).logits[:, -1, :]
            out.append(logits.float().numpy())
            if step == commit_at:  # worker 0's step ends: into the shared history, a new step begins
                common.append_from(current[0])
                current[0].clear()
    return np.stack(out)


def hogwild_run(model_path, prompt, tokens, commit_at, threads):
    """The same protocol over hogwild_cpp's shared cache; logits [steps, W, vocab]."""
    from hogwild_cpp.cache import SharedCache
    from hogwild_cpp.native import Context, ContextConfig, Model

    W = tokens.shape[0]
    model = Model(str(model_path))
    ctx = Context(model, ContextConfig(n_ctx=1024, n_batch=256, n_seq_max=W, n_threads=threads,
                                       type_k="f32", type_v="f32", flash_attn="off"))
    cache = SharedCache(ctx, W)
    prompt_block = cache.new_block("prompt")
    cache.set_view(0, [prompt_block.id])
    cache.decode({0: list(prompt)})
    history, current = [], [cache.new_block("step") for _ in range(W)]
    out = []
    for step in range(tokens.shape[1]):
        for w in range(W):
            cache.set_view(w, [prompt_block.id, *history, *(current[v].id for v in range(W) if v != w), current[w].id])
        logits = cache.decode({w: [int(tokens[w, step])] for w in range(W)})
        out.append(np.stack([logits[w] for w in range(W)]))
        if step == commit_at:
            history.append(current[0].id)
            current[0] = cache.new_block("step")
    assert cache.used_cells() == cache.unique_tokens()
    ctx.close()
    model.close()
    return np.stack(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", type=Path, default=ROOT / ".anchor" / "hogwild_llm")
    parser.add_argument("--workers", default="2,3")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--weight-std", type=float, default=0.08)
    parser.add_argument("--prompt-len", type=int, default=20)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--commit-at", type=int, default=12, help="step after which worker 0's block joins the "
                        "history (-1: never)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)

    import os
    # the reference's CPU paths: no triton kernels, no torch.compile
    os.environ.setdefault("HOGWILD_USE_TRITON", "0")
    os.environ.setdefault("HOGWILD_NO_COMPILE", "1")
    import torch
    torch.set_num_threads(args.threads)
    from anchor import Reference

    with tempfile.TemporaryDirectory() as tmp:
        model, gguf_path = build_pair(args, Path(tmp))
        ref = Reference(args.impl, model)
        rng = np.random.default_rng(args.seed)
        n_vocab = model.config.vocab_size

        # the conversion: a plain forward of the same tokens
        from hogwild_cpp.native import Context, ContextConfig, Model
        probe = [int(t) for t in rng.integers(3, n_vocab, 32)]
        with torch.inference_mode():
            hf = model(torch.tensor([probe])).logits[0, -1].float().numpy()
        m = Model(str(gguf_path))
        c = Context(m, ContextConfig(n_ctx=256, n_seq_max=1, n_threads=args.threads, type_k="f32", type_v="f32",
                                     flash_attn="off", hogwild=False))
        c.clear()
        ll_logits = c.decode([(t, i, 0, i == len(probe) - 1) for i, t in enumerate(probe)])[0]
        c.close()
        m.close()
        conversion = rel_l2(ll_logits, hf)
        print(f"conversion (plain forward, 32 tokens): rel L2 {conversion:.2e}")

        worst_all = 0.0
        for W in [int(x) for x in args.workers.split(",")]:
            prompt = [int(t) for t in rng.integers(3, n_vocab, args.prompt_len)]
            tokens = rng.integers(3, n_vocab, (W, args.steps))
            theirs = reference_run(ref, model, prompt, tokens, args.commit_at)
            ours = hogwild_run(gguf_path, prompt, tokens, args.commit_at, args.threads)
            errs = np.array([[rel_l2(ours[s, w], theirs[s, w]) for w in range(W)] for s in range(args.steps)])
            agree = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            before, after = errs[:args.commit_at + 1].max(), errs[args.commit_at + 1:].max(initial=0.0)
            print(f"W={W}, {args.layers} layers, {args.steps} steps, worker 0's step joins the history after step "
                  f"{args.commit_at}: worst rel L2 {errs.max():.2e} (before the commit {before:.2e}, after {after:.2e}), "
                  f"argmax agrees {agree}/{errs.size}")
            worst_all = max(worst_all, errs.max())
    ok = worst_all <= args.tol and conversion <= args.tol
    print(("ok" if ok else "FAIL") + f": worst rel L2 {worst_all:.2e} (tolerance {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
