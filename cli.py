"""The `hogwild` command line."""

import os
import sys
import time
from pathlib import Path

import click


@click.group()
@click.version_option(package_name="hogwild_cpp")
def main():
    """Hogwild! Inference: several workers over one shared llama.cpp KV cache."""


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("prompt_file", type=click.File("r"))
@click.option("-n", "--n-predict", default=64, show_default=True, help="Tokens to generate.")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--n-ctx", default=2048, show_default=True, help="Context size.")
def complete(model, prompt_file, n_predict, threads, n_ctx):
    """Greedy single-sequence completion of PROMPT_FILE (no workers; a baseline)."""
    import llama_cpp  # slow import: keep `hogwild --help` fast

    prompt = prompt_file.read()
    threads = threads or os.cpu_count()
    llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    n_prompt = len(llm.tokenize(prompt.encode()))
    if n_prompt + n_predict > n_ctx:
        raise click.UsageError(f"prompt ({n_prompt} tokens) + {n_predict} tokens do not fit --n-ctx {n_ctx}")
    start = time.perf_counter()
    n_generated = 0
    for chunk in llm.create_completion(prompt, max_tokens=n_predict, temperature=0.0, stream=True):
        choice = chunk["choices"][0]
        click.echo(choice["text"], nl=False)
        n_generated += choice["finish_reason"] is None  # the closing chunk carries no token
    click.echo()
    elapsed = time.perf_counter() - start
    print(f"{n_generated} tokens in {elapsed:.2f} s ({n_generated / elapsed:.1f} tok/s)", file=sys.stderr)


def _int_list(ctx, param, value):
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-np", "--workers", default="1,2,4", show_default=True, callback=_int_list,
              help="Worker counts, comma-separated.")
@click.option("--ctx", "ctxs", default="1024", show_default=True, callback=_int_list,
              help="Context lengths (tokens per worker view), comma-separated.")
@click.option("--steps", default=20, show_default=True, help="Timed decode steps per measurement.")
@click.option("-ngl", "--gpu-layers", default=0, show_default=True, help="Layers to offload to the GPU.")
@click.option("-t", "--threads", type=int, default=0, help="CPU threads (default: all cores).")
@click.option("--device", default="cpu", show_default=True, help="Label for the device column.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here.")
def bench(model, workers, ctxs, steps, gpu_layers, threads, device, json_file):
    """Median decode-step time of hogwild views against plain llama.cpp, in one run."""
    import json
    from dataclasses import asdict

    from hogwild_cpp import bench as b

    rows = b.run(str(model), workers, ctxs, steps=steps, n_gpu_layers=gpu_layers, threads=threads,
                 device=device, progress=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    click.echo(b.markdown(rows))
    if json_file:
        tmp = json_file.with_suffix(json_file.suffix + ".tmp")
        tmp.write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=1))
        tmp.replace(json_file)


if __name__ == "__main__":
    main()
