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


if __name__ == "__main__":
    main()
