"""A/B: a decode step in the engine's old combined layout (markers after each unfinished step and an
own header, written at setup: early cells, one fold a step) against the new one (hogwild_cpp.bench)."""
import random, sys
sys.path.insert(0, '.')
from hogwild_cpp import bench as B
from hogwild_cpp.cache import SharedCache
from hogwild_cpp.native import Context, Model

def old_step(model, W, L, steps, threads, rng):
    ctx = Context(model, B._config(model, L + (W + 1) * (steps + 8) + 64, W, threads))
    c = SharedCache(ctx, W)
    tok = lambda n: B._tokens(rng, n, model.n_vocab)
    own = max(1, min(B.STEP_LEN, L // (4 * W)))
    prompt, hdr = c.new_block("prompt"), c.new_block("separator")
    marker = [c.new_block("separator") for _ in range(W)]
    own_hdr = [c.new_block("separator") for _ in range(W)]
    shared = L - W * (own + 3) - 8 - 12
    plen = max(1, shared // 4)
    c.set_view(0, [prompt.id]); c.decode({0: tok(plen)})
    c.set_view(0, [prompt.id, hdr.id]); c.decode({0: tok(12)})
    base = [prompt.id, hdr.id]
    for w in range(W): c.set_view(w, base + [marker[w].id])
    c.decode({w: tok(3) for w in range(W)})
    for w in range(W): c.set_view(w, base + [marker[w].id, own_hdr[w].id])
    c.decode({w: tok(8) for w in range(W)})
    history, left = [], shared - plen
    while left > 0:
        n = min(B.STEP_LEN, left); b = c.new_block("step"); history.append(b.id)
        c.set_view(0, [*base, marker[0].id, own_hdr[0].id, *history]); c.decode({0: tok(n)}); left -= n
    cur = [c.new_block("step") for _ in range(W)]
    def view(w):
        wip = [b for v in range(W) if v != w for b in (cur[v].id, marker[v].id)]
        return [prompt.id, *history, hdr.id, *wip, own_hdr[w].id, cur[w].id]
    for w in range(W): c.set_view(w, view(w))
    c.decode({w: tok(own) for w in range(W)})
    for w in range(W): c.set_view(w, view(w))
    def step():
        for w in range(W): c.set_view(w, view(w))
        c.decode({w: [rng.randrange(3, model.n_vocab)] for w in range(W)})
    ms = B._median_ms(step, steps)
    ctx.close()
    return ms

path, ngl, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctxs = [int(x) for x in sys.argv[4].split(",")]
workers = [int(x) for x in sys.argv[5].split(",")]
model = Model(path, n_gpu_layers=ngl)
rng = random.Random(0)
print("| model | W | ctx | old layout ms | new layout ms | batched ms | old/batched | new/batched |")
print("|---|---|---|---|---|---|---|---|")
for L in ctxs:
    for W in workers:
        old = old_step(model, W, L, 20, threads, rng)
        new, _, _ = B.hogwild_step(model, W, L, 20, threads, rng)
        bat = B.batched_step(model, W, L, 20, threads, rng)
        print(f"| {path.rsplit('/', 1)[-1]} | {W} | {L} | {old:.3f} | {new:.3f} | {bat:.3f} | {old / bat:.2f} | {new / bat:.2f} |", flush=True)
