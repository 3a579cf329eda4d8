"""The `hogwild` command line."""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from hogwild_cpp.layouts import LAYOUTS
from hogwild_cpp.settings import CACHE_TYPES, FLASH_ATTN, QUANTIZED, SPLIT_MODES


def _float_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace("/", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")


class _Option(click.Option):
    """An option whose `old` spellings still work but are left out of --help, so that old commands keep
    working after a flag took llama.cpp's name."""

    def __init__(self, param_decls=None, old=(), **attrs):
        super().__init__([*param_decls, *old], **attrs)
        self.old = set(old)

    def get_help_record(self, ctx):
        opts, self.opts = self.opts, [o for o in self.opts if o not in self.old]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


class _GpuLayers(click.ParamType):
    """-ngl as llama.cpp takes it: a number of layers, `auto` (what fits) or `all`."""

    name = "N|auto|all"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text in ("auto", "all"):
            return "auto" if text == "auto" else -1  # -1: every layer (llama.h)
        try:
            n = int(text)
        except ValueError:
            n = -2
        if n < -1:
            self.fail(f"{value!r} is not a number of layers, auto or all", param, ctx)
        return n


def _options(*options):
    """Decorator: several click options at once, in the order given (as --help lists them)."""
    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return decorate


def _ctx_option(help: str = "Context size in tokens (0: the model's trained context, at most 8192)."):
    return click.option("-c", "--ctx-size", "ctx_size", default=0, show_default=True, type=click.IntRange(0),
                        cls=_Option, old=("--n-ctx",), help=help)


THREADS_HELP = "CPU threads (default 0: the physical cores this process may use, as llama.cpp's default)."

_threads_option = click.option("-t", "--threads", default=0, type=click.IntRange(0), help=THREADS_HELP)

_gpu_layers_option = click.option(
    "-ngl", "--gpu-layers", "--n-gpu-layers", "gpu_layers", default="auto", show_default=True, type=_GpuLayers(),
    help="Layers on the GPUs: a number, all, or auto (what fits in their free memory with the KV cache, an "
         "estimate from the file's size; 0 on a build without GPU support).")


def _model_option(f):
    """llama.cpp's -m/--model, and MODEL as the first argument as before (one of the two)."""
    return click.option("-m", "--model", "model_opt", type=click.Path(dir_okay=True, path_type=Path),
                        help="The GGUF model file (or give it as the first argument).")(f)


def _system_option(help: str):
    """llama.cpp's -sys/--system-prompt."""
    return click.option("-sys", "--system-prompt", "system_prompt", help=help)


def _prompt_options(system_help: str):
    """llama.cpp's -f/--file, -p/--prompt and -sys/--system-prompt (the prompt: one of -f, -p, PROMPT_FILE)."""
    return _options(
        click.option("-f", "--file", "file_opt", type=click.Path(allow_dash=True, path_type=Path),
                     help="The prompt file ('-': stdin), as PROMPT_FILE."),
        click.option("-p", "--prompt", "prompt_text", help="The prompt itself, instead of a file."),
        _system_option(system_help),
    )


def _cache_options(f):
    """llama.cpp's flash attention and KV cache types, the same on run, complete and eval."""
    return _options(
        click.option("-fa", "--flash-attn", default="auto", show_default=True, type=click.Choice(list(FLASH_ATTN)),
                     help="Flash attention (auto: where the backend supports it)."),
        click.option("-ctk", "--cache-type-k", default="f16", show_default=True, type=click.Choice(list(CACHE_TYPES)),
                     help="KV cache type for K."),
        click.option("-ctv", "--cache-type-v", default="f16", show_default=True, type=click.Choice(list(CACHE_TYPES)),
                     help="KV cache type for V (a quantized V needs flash attention)."),
    )(f)


def _sampling_options(seed_help: str):
    """llama.cpp's sampling options (seed, temperature, top-k, top-p, min-p), the same on run, complete, eval
    and serve."""
    return _options(
        click.option("-s", "--seed", default=0, show_default=True, type=click.IntRange(-1, 0xFFFFFFFF),
                     help=seed_help),
        click.option("--temp", default=0.6, show_default=True, type=click.FloatRange(0),
                     help="Temperature (0: greedy)."),
        click.option("--top-k", default=40, show_default=True, type=click.IntRange(0)),
        click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1)),
        click.option("--min-p", default=0.05, show_default=True, type=click.FloatRange(0, 1)),
    )


def _no_zero_budget(steps: int) -> int:
    if steps == 0:
        raise click.BadParameter("a budget of 0 steps: give 1 or more, or -1 (until an answer or a full context)")
    return steps


def _model_path(positional: list, model_opt: Path | None, n_after: int) -> tuple[Path, list]:
    """The model (-m MODEL, or the first argument) and the arguments after it (at most n_after)."""
    given = [a for a in positional if a is not None]
    if model_opt is None:
        if not given:
            raise InputError("no model: give -m MODEL.gguf (or the model as the first argument)")
        model, given = Path(given[0]), given[1:]
    elif len(given) > n_after:
        raise InputError(f"the model is given twice (-m {model_opt} and {given[0]}): give it once")
    else:
        model = model_opt
    if not model.exists():
        raise InputError(f"model {model} does not exist")
    if model.is_dir():
        raise InputError(f"model {model} is a directory, not a GGUF file")
    return model, given


def _prompt(rest: list, file_opt: Path | None, text: str | None) -> tuple[str, Path | None]:
    """The prompt's text and its file (None for -p): exactly one of PROMPT_FILE, -f FILE, -p TEXT."""
    given = len(rest) + (file_opt is not None) + (text is not None)
    if given > 1:
        raise InputError("the prompt is given twice: give one of PROMPT_FILE, -f FILE and -p TEXT")
    if given == 0:
        raise InputError("no prompt: give -f FILE ('-': stdin), -p TEXT, or PROMPT_FILE after the model")
    if text is not None:
        return _clean_prompt(text, "-p"), None
    path = Path(file_opt if file_opt is not None else rest[0])
    return _read_prompt(path), path


def _warn_without_gpu(gpu_layers, rpc: str | None = None) -> None:
    """-ngl N or all with no GPU (and no --rpc servers): said once, and the run goes on on the CPU (auto:
    silently)."""
    import hogwild_cpp

    if gpu_layers not in (0, "auto") and not rpc and not hogwild_cpp.gpu_offload_supported():
        shown = "all" if gpu_layers == -1 else gpu_layers
        print(f"warning: -ngl {shown} ignored: this llama.cpp build has no GPU support "
              "(rebuild with HOGWILD_CUDA=1 make build)", file=sys.stderr)


def _show_prompt(model, text: str) -> None:
    """--verbose-prompt, as llama.cpp prints it: the prompt, its token count, then each token as id -> 'piece'
    (on stderr, before anything is generated)."""
    tokens = model.tokenize(text, add_special=True)
    lines = [f"prompt: '{text}'", f"number of tokens in prompt = {len(tokens)}"]
    lines += [f"{t:6d} -> '{model.piece(t).decode('utf-8', errors='replace')}'" for t in tokens]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _use_color(color: str, no_color: bool, tty: bool) -> bool:
    """--color on|off|auto (auto: stdout is a terminal and NO_COLOR is unset, https://no-color.org)."""
    if no_color or color == "off":
        return False
    return color == "on" or tty and not os.environ.get("NO_COLOR")


def _device_options(f):
    """llama.cpp's options for models on several devices (GPUs, RPC servers), the same on run and bench."""
    return _options(
        click.option("-sm", "--split-mode", default="layer", show_default=True, type=click.Choice(list(SPLIT_MODES)),
                     help="How to split the model over several GPUs or RPC devices (llama.cpp's): none, layer, "
                          "row (CUDA)."),
        click.option("-ts", "--tensor-split", default=None, callback=_float_list,
                     help="The share of the model on each device, comma-separated (e.g. 3,1), as llama.cpp's -ts."),
        click.option("-mg", "--main-gpu", default=0, show_default=True, type=click.IntRange(0),
                     help="The device for split mode none (and for intermediate results with row)."),
        click.option("--rpc", default=None, help="llama.cpp RPC servers (HOST:PORT,...) whose devices take layers "
                     "(see `hogwild rpc-server`; never expose one to an untrusted network)."),
    )(f)


def _exit_on_broken_pipe() -> None:
    """stdout's reader went away (`hogwild run ... | head`): end quietly with 141, as a process killed by
    SIGPIPE (llama.cpp's tools), stdout sent to /dev/null so that Python's last flush has nothing to fail."""
    import signal

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


class _ShownSuggestions:
    """A mistyped option's "Did you mean" names only options --help shows: click's own suggestions come from
    every name, hidden ones and old spellings too (`--colour` got `--no-color`)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if not exc.possibilities:
                raise
            shown = [o for p in self.get_params(ctx) if isinstance(p, click.Option) and not p.hidden
                     for o in [*p.opts, *p.secondary_opts]
                     if o not in getattr(p, "old", ()) and len(o) > 2]  # click's long names only, as it does
            raise click.NoSuchOption(exc.option_name, possibilities=shown, ctx=exc.ctx) from None


class _Command(_ShownSuggestions, click.Command):
    pass


class _Group(_ShownSuggestions, click.Group):
    """The `hogwild` group: a closed stdout ends any subcommand, and --help or --version, quietly (click's own
    handling exits 1)."""

    command_class = _Command

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # `hogwild --help` and `--version` write while their arguments are parsed, before invoke
            return super().make_context(info_name, args, parent=parent, **extra)
        except BrokenPipeError:
            _exit_on_broken_pipe()

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # what is still buffered, while a broken pipe is caught here
        except BrokenPipeError:
            _exit_on_broken_pipe()


@click.group(cls=_Group)
@click.version_option(package_name="hogwild_cpp")
def main():
    """Hogwild! Inference: several workers over one shared llama.cpp KV cache."""


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))
@click.argument("prompt_arg", metavar="[PROMPT_FILE]", required=False, type=click.Path(allow_dash=True, path_type=Path))
@_model_option
@_prompt_options("A system message before the prompt (through the chat template; with --raw or no template, "
                 "text before it).")
@click.option("-n", "--n-predict", default=64, show_default=True, type=click.IntRange(-1),
              help="Tokens to generate (-1: until the end of the text or a full context).")
@_ctx_option()
@_gpu_layers_option
@_threads_option
@_cache_options
@_sampling_options("Sampling seed (-1: a random one, printed).")
@click.option("--raw", is_flag=True, help="The prompt as it is, without the model's chat template.")
@click.option("--verbose-prompt", is_flag=True, help="Print the prompt and its tokens (id -> piece) on stderr first.")
def complete(model_arg, prompt_arg, model_opt, file_opt, prompt_text, system_prompt, n_predict, ctx_size, gpu_layers,
             threads, flash_attn, cache_type_k, cache_type_v, seed, temp, top_k, top_p, min_p, raw, verbose_prompt):
    """One sequence completing the prompt (PROMPT_FILE or -f FILE, '-': stdin; or -p TEXT), no workers: the
    baseline for `run` (one worker's context, chat template, sampling, seed and cache settings, and run's
    timing block; --raw: no template)."""
    from hogwild_cpp import native, protocol, timing  # slow import: keep `hogwild --help` fast

    model, rest = _model_path([model_arg, prompt_arg], model_opt, 1)
    prompt, _ = _prompt(rest, file_opt, prompt_text)
    t_start = time.perf_counter()
    if cache_type_v in QUANTIZED and flash_attn == "off":
        raise InputError(f"a quantized V cache ({cache_type_v}) needs flash attention (-fa on or auto)")
    seed = _pick_seed(seed)
    _warn_without_gpu(gpu_layers)
    memory = timing.PeakMemory()
    try:
        m = native.Model(model, n_gpu_layers=gpu_layers, fit_for=(ctx_size, cache_type_k, cache_type_v))
    except native.NativeError as exc:  # a file llama.cpp cannot load: one line, exit 2
        raise InputError(str(exc))
    system = system_prompt.strip() if system_prompt and system_prompt.strip() else None
    text = None
    if not raw and m.chat_template():
        text = m.apply_chat_template(([("system", system)] if system else []) + [("user", prompt.strip())])
        thinking = protocol.thinking_section(m.chat_template(), protocol.default())
        if text is not None and thinking is not None and not text.endswith(thinking.open):
            text += thinking.open
    if text is None:
        text = prompt if system is None else f"{system}\n\n{prompt}"
    try:
        ctx = native.Context(m, native.ContextConfig(n_ctx=ctx_size or min(m.n_ctx_train, 8192), n_threads=threads,
                                                     type_k=cache_type_k, type_v=cache_type_v, flash_attn=flash_attn,
                                                     hogwild=False))
    except native.NativeError as exc:
        m.close()
        raise click.ClickException(f"{exc} (try a smaller -c)")
    if verbose_prompt:
        _show_prompt(m, text)
    tokens = m.tokenize(text, add_special=True)
    if len(tokens) + max(n_predict, 1) > ctx.n_ctx:
        raise InputError(f"the prompt ({len(tokens)} tokens) and {max(n_predict, 1)} tokens do not fit the context "
                         f"({ctx.n_ctx} tokens): use -c {len(tokens) + max(n_predict, 1)} or more")
    sampler = native.Sampler(m.n_vocab, temp, top_k, top_p, min_p, seed)
    n_prompt, n_generated, pos = len(tokens), 0, 0
    start = time.perf_counter()
    load_s = start - t_start
    prompt_s = None
    ctx.clear()
    while (n_generated < n_predict or n_predict < 0) and pos + len(tokens) < ctx.n_ctx:  # the last token: not decoded
        logits = ctx.decode([(t, pos + i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])[-1]
        pos += len(tokens)
        if prompt_s is None:
            prompt_s = time.perf_counter() - start
        token = sampler.sample(logits)
        if m.is_eog(token):
            break
        click.echo(m.piece(token).decode("utf-8", errors="replace"), nl=False)
        n_generated += 1
        tokens = [token]
        memory.sample()
    click.echo()
    gen_s = time.perf_counter() - start - (prompt_s or 0.0)
    sampler.close()
    ctx.close()
    m.close()
    memory.sample(force=True)
    timing.print_block(timing.Timing(  # run's block for its one sequence: a decode step a token
        load_s=load_s, prompt_tokens=n_prompt, prompt_s=prompt_s or 0.0, generated={"sequence": n_generated},
        generate_s=gen_s, steps=n_generated, total_s=time.perf_counter() - t_start, peak_rss=memory.peak_rss(),
        gpus=list(memory.gpus.values())))


def _pick_seed(seed: int) -> int:
    """-1 (or llama.cpp's LLAMA_DEFAULT_SEED, 0xFFFFFFFF): a random seed, printed on stderr so that the run can
    be repeated with -s; any other seed as it is."""
    if seed not in (-1, 0xFFFFFFFF):
        return seed
    import secrets

    seed = secrets.randbelow(2 ** 31)
    print(f"seed: {seed} (-s {seed} repeats this run)", file=sys.stderr)
    return seed


class InputError(click.ClickException):
    """A problem with what the user gave us (model, prompt, flags): one line, exit code 2."""

    exit_code = 2


def _write_atomic(path: Path, text: str) -> None:
    """Write a temporary file of its own next to FILE (.FILE.XXXXXXXX.tmp), then rename it to FILE: FILE is
    whole or untouched, no temporary file stays behind, and two runs writing the same FILE never share one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as a file opened for writing would be (mkstemp: 0600)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def _check_collisions(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Outputs must differ from each other and from every input (the prompt, the model, the protocol)."""
    outs = [(flag, p) for flag, p in outputs.items() if p is not None]
    for i, (flag, path) in enumerate(outs):
        for other, p in outs[:i]:
            if _same_file(path, p):
                raise InputError(f"{flag} {path} is also the {other} file: give each its own")
        for name, p in inputs.items():
            if p is not None and str(p) != "-" and _same_file(path, p):
                raise InputError(f"{flag} {path} is the {name}: it would be overwritten")


class _Interrupt:
    """The SIGINT handler of a run, installed before the model loads: Ctrl-C is remembered (never raised
    inside llama.cpp's callbacks, where Python would swallow it) and stops the run as soon as there is one."""

    def __init__(self):
        self.requested, self.run = False, None

    def __call__(self, *_):
        self.requested = True
        if self.run is not None:
            self.run.stop()

    def attach(self, run) -> None:
        self.run = run
        if self.requested:
            run.stop()


def _save_result(path: Path, text: str) -> str | None:
    """Write the result to PATH; if that fails, to the temporary directory. Returns the failure, if any."""
    try:
        _write_atomic(path, text)
        return None
    except OSError as exc:
        problem = f"could not write {path} ({exc.strerror or exc})"
    fallback = Path(tempfile.gettempdir()) / f"hogwild-{os.getpid()}-{path.name}"
    try:
        _write_atomic(fallback, text)
        return f"{problem}; the result is in {fallback}"
    except OSError:
        return f"{problem}; the result follows:\n{text}"


def _check_output_path(path: Path | None, flag: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint=flag)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist", param_hint=flag)
    if not os.access(parent, os.W_OK):
        raise click.BadParameter(f"directory {parent} is not writable", param_hint=flag)


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))
@click.argument("prompt_arg", metavar="[PROMPT_FILE]", required=False, type=click.Path(allow_dash=True, path_type=Path))
@_model_option
@_prompt_options("Your own system prompt: it opens the system message, before the rules when they go there "
                 "(--instructions-in system).")
@click.option("-np", "--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Number of workers (llama.cpp's -np, parallel sequences: here they share one cache).")
@click.option("--layout", default="combined", show_default=True,
              type=click.Choice(list(LAYOUTS)),
              help="How workers see each other (paper §3.2): " + "; ".join(f"{k}: {v.summary}" for k, v in LAYOUTS.items()))
@click.option("-n", "--max-steps", "--n-predict", "max_steps", default=512, show_default=True, type=click.IntRange(-1),
              callback=lambda ctx, param, value: _no_zero_budget(value),
              help="Budget in parallel decode steps: tokens per worker (-1: until an answer or a full context). "
                   "llama.cpp's -n counts one sequence's tokens; here every worker writes one token a step.")
@_ctx_option()
@_gpu_layers_option
@_device_options
@_threads_option
@_cache_options
@_sampling_options("Sampling seed (worker w uses seed + w; -1: a random one, printed).")
@click.option("--names", help="Comma-separated worker names (default: Alice, Bob, ...).")
@click.option("--check-every", default=None, type=click.IntRange(0),
              help="Open a step with the self-check question every N tokens of finished steps "
                   "(0: never; default: the protocol's, 256).")
@click.option("--protocol", "protocol_file", type=click.Path(path_type=Path),
              help="A TOML or JSON file overriding the texts the engine writes (headers, markers, prompts, "
                   "openers, self-check, finisher); see `hogwild protocol`.")
@click.option("--instructions-in", type=click.Choice(["user", "system"]), default=None,
              help="Put the rules in the user message, before the problem (the protocol's default, as the "
                   "paper does) or in the system message.")
@click.option("--finisher-tokens", type=click.IntRange(0), default=None,
              help="At the budget with no answer, at most N greedy tokens to close the \\boxed{...} "
                   "(0: no finisher; default: the protocol's, 16).")
@click.option("--trace", "trace_file", type=click.Path(path_type=Path), help="Write the JSONL trace here.")
@click.option("--output", "output_file", type=click.Path(path_type=Path), help="Write the result as JSON here.")
@click.option("--transcript", "transcript_file", type=click.Path(path_type=Path),
              help="Write the run as a person reads it here: FILE.md (Markdown) or FILE.html (one self-contained "
                   "page).")
@click.option("--json", "json_events", is_flag=True, help="Stream the run's events on stdout as JSON Lines (token, "
              "step_start, step, done; see README), and nothing else there.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log.")
@click.option("--verbose-prompt", is_flag=True,
              help="Print the whole prompt the workers read (rules, problem, chat template) and its tokens "
                   "(id -> piece) on stderr first.")
@click.option("--quiet", is_flag=True, help="Print only the answer (nothing if there is none). Exit code: 0 with an "
              "answer, 3 when the run ended without one, 130 interrupted, 1 a failure, 2 bad input.")
@click.option("--color", default="auto", show_default=True, type=click.Choice(["on", "off", "auto"]),
              help="Colour each worker's text (auto: on a terminal, unless NO_COLOR is set).")
@click.option("--no-color", is_flag=True, hidden=True)  # the old spelling of --color off
def run(model_arg, prompt_arg, model_opt, file_opt, prompt_text, system_prompt, workers, layout, max_steps, ctx_size,
        gpu_layers, split_mode, tensor_split, main_gpu, rpc, threads, flash_attn, cache_type_k, cache_type_v, seed,
        temp, top_k, top_p, min_p, names, check_every, protocol_file, instructions_in, finisher_tokens, trace_file,
        output_file, transcript_file, json_events, verbose, verbose_prompt, quiet, color, no_color):
    """Solve a problem (PROMPT_FILE or -f FILE, '-': stdin; or -p TEXT) with several workers over one shared
    KV cache. The model: MODEL or -m MODEL."""
    import json
    import signal
    from dataclasses import asdict

    import hogwild_cpp
    from hogwild_cpp import BadInput, Hogwild, RunFailure, Settings, protocol, timing, transcript
    from hogwild_cpp.errors import Unsupported
    from hogwild_cpp.engine import DecodeProgress, DoneEvent, Progress, SetupProgress
    from hogwild_cpp.jsonl import JsonLines
    from hogwild_cpp.offload import kv_cache_bytes
    from hogwild_cpp.view import LiveView, StatusLine

    model, rest = _model_path([model_arg, prompt_arg], model_opt, 1)
    try:
        problem, prompt_file = _prompt(rest, file_opt, prompt_text)
    except KeyboardInterrupt:  # Ctrl-C while reading stdin
        print("stop: interrupted", file=sys.stderr)
        sys.exit(130)
    t_start = time.perf_counter()  # the timing block's total (a prompt typed on stdin not counted)
    stop = _Interrupt()
    signal.signal(signal.SIGINT, stop)  # from here on Ctrl-C ends the run with exit 130, writing what it has
    _check_output_path(trace_file, "--trace")
    _check_output_path(output_file, "--output")
    _check_output_path(transcript_file, "--transcript")
    if transcript_file is not None and transcript.format_of(transcript_file) is None:
        raise InputError(f"--transcript {transcript_file}: name a .md or .html file")
    _check_collisions({"--trace": trace_file, "--output": output_file, "--transcript": transcript_file},
                      {"prompt file": prompt_file, "model": model, "protocol file": protocol_file})
    seed = _pick_seed(seed)
    settings = Settings(workers=workers, layout=layout, names=[n.strip() for n in names.split(",")] if names else None,
                        max_steps=max_steps, n_ctx=ctx_size, n_gpu_layers=gpu_layers, threads=threads, seed=seed,
                        system_prompt=system_prompt,
                        temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, check_every=check_every,
                        flash_attn=flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                        instructions_in=instructions_in, finisher_tokens=finisher_tokens, split_mode=split_mode,
                        tensor_split=tensor_split, main_gpu=main_gpu, rpc=rpc.split(",") if rpc else None)
    try:
        settings.protocol = protocol.load(protocol_file) if protocol_file is not None else None
        settings.check()
    except BadInput as exc:
        raise InputError(str(exc))

    hogwild_cpp.set_verbose(verbose)
    _warn_without_gpu(gpu_layers, rpc)
    memory = timing.PeakMemory()
    t_load = time.perf_counter()
    try:
        hw = Hogwild(model, settings)
        n_train = hw.model.n_ctx_train
        if ctx_size > n_train > 0:
            kv = kv_cache_bytes(hw.model, ctx_size, cache_type_k, cache_type_v)
            print(f"warning: -c {ctx_size} is more than the {n_train} tokens {model.name} was trained on: "
                  f"past them its output may degrade; the KV cache takes "
                  f"{'about ' + timing.size(kv) if kv else 'memory in proportion to -c'}", file=sys.stderr)
        run = hw.start(problem, trace=trace_file)
        stop.attach(run)
        load_s = time.perf_counter() - t_load
        if verbose_prompt:
            _show_prompt(hw.model, run.prompt_text())
    except Unsupported as exc:
        raise InputError(f"{model.name} cannot run as hogwild workers: {exc}")
    except BadInput as exc:  # a model llama.cpp cannot load
        raise InputError(str(exc))
    except RunFailure as exc:
        raise click.ClickException(f"{exc} (try a smaller -c or -ngl)")
    except OSError as exc:  # the trace's file (its directory was checked above)
        raise InputError(f"could not write the trace {trace_file}: {exc.strerror or exc}")
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if tty else None
    status = StatusLine(shares_screen=tty) if sys.stderr.isatty() and not quiet and not json_events else None
    view = JsonLines() if json_events else \
        LiveView(run.names, color=_use_color(color, no_color, tty), quiet=quiet, width=width, status=status)
    steps = transcript.StepLog() if transcript_file is not None else None
    quiet = quiet or json_events  # stdout is the events' alone; the exit code as with --quiet
    result, t_prefill = None, time.perf_counter()
    t_setup = t_prefill
    try:
        for ev in run.events():
            view.event(ev)
            if steps is not None:
                steps.add(ev)
            if isinstance(ev, DecodeProgress):
                memory.sample()
            elif isinstance(ev, Progress) and not quiet and time.perf_counter() - t_prefill > PROGRESS_AFTER_S:
                print(f"prompt: {ev.done}/{ev.total} tokens", file=sys.stderr)
            elif isinstance(ev, SetupProgress) and not quiet:  # many workers: their markers and headers take time
                now = time.perf_counter()
                if now - t_prefill > PROGRESS_AFTER_S and (now - t_setup > PROGRESS_AFTER_S or ev.done == ev.total):
                    print(f"workers: {ev.done}/{ev.total} set up", file=sys.stderr)
                    t_setup = now
            elif isinstance(ev, DoneEvent):
                result = ev.result
    except BadInput as exc:
        raise InputError(str(exc))
    except RunFailure as exc:
        raise click.ClickException(str(exc))
    finally:
        view.close()  # the last lines out, the status line gone (before an error's message too)
    stats = timing.run_timing(result, load_s, memory, time.perf_counter() - t_start)
    if json_events:
        view.done(result, stats.to_dict())
    elif not quiet:
        click.echo(f"answer: {result.answer if result.answer is not None else '(none)'}  ({_how(result)})")
    elif result.answer is not None:  # the answer alone; the exit code says whether there was one
        click.echo(result.answer)
    failures = []
    if run.trace_error is not None:
        failures.append(f"the trace was not written: {trace_file} ({run.trace_error.strerror or run.trace_error})")
    if output_file:
        record = {**asdict(result), "model": str(model), "settings": _settings_record(settings, protocol_file)}
        failure = _save_result(output_file, json.dumps(record, indent=1, ensure_ascii=False))
        if failure:
            failures.append(failure)
    if transcript_file:
        page = transcript.render(transcript_file, problem, result, steps, run.names, model.name, settings)
        failure = _save_result(transcript_file, page)
        if failure:
            failures.append(failure)
    if not quiet:
        timing.print_block(stats)
    if failures:  # a runtime failure: exit 1, after everything else was saved and said
        raise click.ClickException("; ".join(failures))
    if result.reason == "interrupted":
        if quiet:
            print("stop: interrupted", file=sys.stderr)
        sys.exit(130)
    if quiet and result.answer is None:
        sys.exit(3)


# Progress of the prompt's prefill is printed once it has taken this long
PROGRESS_AFTER_S = 1.0


def _settings_record(settings, protocol_file: Path | None) -> dict:
    """The run's settings for the output JSON: Settings as a dict, the protocol as its file or "default"."""
    from dataclasses import fields

    record = {f.name: getattr(settings, f.name) for f in fields(settings)}
    record["protocol"] = str(protocol_file) if protocol_file is not None else "default"
    return record


def _how(result) -> str:
    """The stop reason, and who wrote the answer."""
    if result.answer_source == "worker":
        return f"stop: {result.reason}; written by {result.answer_worker}"
    if result.answer_source == "finisher":
        return f"stop: {result.reason}; forced by the finisher"
    return f"stop: {result.reason}"


def _read_prompt(path: Path) -> str:
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except FileNotFoundError:
        raise click.BadParameter(f"{path} does not exist", param_hint="PROMPT_FILE")
    except IsADirectoryError:
        raise click.BadParameter(f"{path} is a directory", param_hint="PROMPT_FILE")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint="PROMPT_FILE")
    return _clean_prompt(text, "PROMPT_FILE", path)


def _clean_prompt(text: str, hint: str, path: Path | None = None) -> str:
    """A prompt without a UTF-8 BOM and with plain line ends (files from Windows); an empty one is refused."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise click.BadParameter(f"{path if path is not None else 'the prompt'} is empty", param_hint=hint)
    return text


def _int_list(ctx, param, value):
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))
@_model_option
@click.option("-np", "--workers", default="1,2,4", show_default=True, callback=_int_list,
              help="Worker counts, comma-separated.")
@click.option("-d", "--n-depth", "ctxs", default="1024", show_default=True, callback=_int_list, cls=_Option,
              old=("--ctx",), help="Context depths (tokens in each worker's view before the timed steps), "
                                   "comma-separated, as llama-bench's -d.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1),
              help="Timed decode steps per measurement (llama-bench's -n counts one sequence's tokens; a step is "
                   "a token for every worker).")
@_gpu_layers_option
@_device_options
@_threads_option
@click.option("--device", default="cpu", show_default=True, help="Label for the device column.")
@click.option("-fa", "--flash-attn", "flash", type=click.Choice([*FLASH_ATTN, "both"]), default="auto",
              show_default=True, help="Flash attention for every measurement (auto: where the backend supports it; "
              "both: a row with and a row without).")
@click.option("-ctk", "--cache-type-k", default="f16", show_default=True, type=click.Choice(list(CACHE_TYPES)),
              help="KV cache type for K.")
@click.option("-ctv", "--cache-type-v", default="f16", show_default=True, type=click.Choice(list(CACHE_TYPES)),
              help="KV cache type for V (a quantized V needs flash attention).")
@click.option("--kernels", is_flag=True, help="Also count GPU kernels per step (CUDA build and PyTorch needed).")
@click.option("--e2e", is_flag=True, help="Time `hogwild run`'s own loop instead: aggregate tokens/s, ms per step "
              "and the share spent decoding, for each -np (greedy, --steps steps, a step ends every "
              "--step-tokens tokens; boundary_share: the steps that decode a new step's label); then the bench's "
              "hogwild, batched and single steps at the run's mean view length (run_vs_bench, and plain_vs_bench "
              "without the step boundaries; bound_batched, bound_hogwild: the speedups those steps allow).")
@click.option("--step-tokens", default=24, show_default=True, help="With --e2e: tokens a step (random weights never "
              "end one).")
@_ctx_option("With --e2e: context size in tokens (0: the model's trained context, at most 8192). Without "
             "--e2e each depth -d sizes its own.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here.")
def bench(model_arg, model_opt, workers, ctxs, steps, gpu_layers, split_mode, tensor_split, main_gpu, rpc, threads,
          device, flash, cache_type_k, cache_type_v, kernels, e2e, step_tokens, ctx_size, json_file):
    """Median decode-step time of hogwild views against plain llama.cpp, in one run (--e2e: the whole loop)."""
    import json
    from dataclasses import asdict

    from hogwild_cpp import bench as b

    model, _ = _model_path([model_arg], model_opt, 0)
    _warn_without_gpu(gpu_layers, rpc)

    if cache_type_v in QUANTIZED and flash in ("off", "both"):
        raise InputError(f"a quantized V cache ({cache_type_v}) needs flash attention: use -fa on or auto")
    from hogwild_cpp import BadInput, RunFailure, Settings

    placement = dict(split_mode=split_mode, tensor_split=tensor_split, main_gpu=main_gpu)
    try:
        Settings(rpc=rpc.split(",") if rpc else None, **placement).check()
        if rpc:
            from hogwild_cpp.native import add_rpc_servers
            add_rpc_servers(rpc.split(","))
    except BadInput as exc:
        raise InputError(str(exc))
    if e2e and flash == "both":
        raise InputError("--e2e runs one flash-attention setting: -fa auto, on or off")

    def row_done(row, rows, profiles=None) -> None:
        """Each row as soon as it is measured (the table's header first), the JSON rewritten with every row
        so far: a bench cut short (a time limit, Ctrl-C) keeps what it measured."""
        click.echo((b.markdown_header(row) + "\n" if len(rows) == 1 else "") + b.markdown_row(row))
        if json_file:
            record = {"e2e_rows": [asdict(r) for r in rows]} if profiles is None else \
                {"rows": [asdict(r) for r in rows], "kernel_profiles": profiles}
            _write_atomic(json_file, json.dumps(record, indent=1))

    progress = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if e2e:
            b.run_e2e(str(model), workers, steps=steps, step_tokens=step_tokens, n_gpu_layers=gpu_layers,
                      threads=threads, device=device, flash=flash, cache=(cache_type_k, cache_type_v), n_ctx=ctx_size,
                      placement=placement, progress=progress, on_row=row_done)
        else:
            b.run(str(model), workers, ctxs, steps=steps, n_gpu_layers=gpu_layers, threads=threads, device=device,
                  flash=flash, cache=(cache_type_k, cache_type_v), kernels=kernels, placement=placement,
                  progress=progress, on_row=row_done)
    except BadInput as exc:  # a model llama.cpp cannot load: one line, exit 2
        raise InputError(str(exc))
    except RunFailure as exc:
        raise click.ClickException(str(exc))
    except KeyboardInterrupt:  # the rows measured so far are printed (and in --json)
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)


@main.command("protocol")
@click.argument("protocol_file", required=False, type=click.Path(path_type=Path))
def protocol_cmd(protocol_file):
    """Print the default protocol file (every text the engine writes), or PROTOCOL_FILE merged over
    it, as JSON: a starting point for `hogwild run --protocol FILE`."""
    import json

    from hogwild_cpp import BadInput, protocol

    if protocol_file is None:
        click.echo(protocol.DEFAULT_FILE.read_text(encoding="utf-8"), nl=False)
        return
    try:
        p = protocol.load(protocol_file)
    except BadInput as exc:
        raise InputError(str(exc))
    click.echo(json.dumps(p.to_dict(), indent=1, ensure_ascii=False))


@main.command("rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Never expose an RPC server to an untrusted network: it has no "
                   "authentication and runs whatever graphs a client sends.")
@click.option("-p", "--port", default=50052, show_default=True, type=click.IntRange(1, 65535))
@_threads_option
@click.option("--device", "devices", default="all", show_default=True, type=click.Choice(["all", "cpu"]),
              help="What to serve: every local accelerator (the CPU when there is none), or the CPU.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache tensors sent to the server here (llama.cpp's rpc-server -c).")
def rpc_server(host, port, threads, devices, cache_dir):
    """llama.cpp's RPC server, from this patched build: lends this machine's devices to `hogwild run --rpc`.

    The server loop is llama.cpp's own (ggml_backend_rpc_start_server); Ctrl-C stops it."""
    import signal
    import socket

    from hogwild_cpp import native
    from hogwild_cpp.cpu import physical_cores

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the RPC server listens on {host}: anyone who can reach it can use this machine; "
              "never expose it to an untrusted network", file=sys.stderr)
    try:
        socket.create_server((host, port)).close()  # a busy port: one line here, not an abort in llama.cpp
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the C loop never returns to Python: let Ctrl-C end the process
    try:
        native.serve_rpc(host, port, threads or physical_cores(), devices,
                         str(cache_dir) if cache_dir else None)
    except native.NativeError as exc:
        raise click.ClickException(str(exc))


# --- serve: the run command's settings options, copied from `run` so that both stay the same ----

# run's option (parameter name) -> the Settings field it sets; options run does not have are skipped
_SERVE_SETTINGS = {"workers": "workers", "layout": "layout", "max_steps": "max_steps", "ctx_size": "n_ctx",
                   "system_prompt": "system_prompt",
                   "gpu_layers": "n_gpu_layers", "threads": "threads", "flash_attn": "flash_attn",
                   "cache_type_k": "cache_type_k", "cache_type_v": "cache_type_v", "seed": "seed", "temp": "temp",
                   "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "names": "names",
                   "check_every": "check_every", "protocol_file": "protocol", "instructions_in": "instructions_in",
                   "finisher_tokens": "finisher_tokens", "split_mode": "split_mode", "tensor_split": "tensor_split",
                   "main_gpu": "main_gpu", "rpc": "rpc"}


def _run_options(names):
    """Decorator: give a command copies of `run`'s options of these parameter names."""
    import copy

    def decorate(f):
        by_name = {p.name: p for p in run.params if isinstance(p, click.Option)}
        params = [copy.copy(by_name[n]) for n in names if n in by_name]
        f.__click_params__ = getattr(f, "__click_params__", []) + params[::-1]  # click reverses them
        return f
    return decorate


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))
@_model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; 0.0.0.0: every interface, use --api-key).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--api-key", envvar="HOGWILD_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on /v1/* (/health stays open).")
@click.option("--queue", "max_queue", default=8, show_default=True, type=click.IntRange(0),
              help="Requests that may wait while one runs; more are refused with 503 and Retry-After.")
@click.option("--alias", help="The model's id in /v1/models and in responses (default: the file's name).")
@_run_options([*_SERVE_SETTINGS, "verbose"])
def serve(model_arg, model_opt, host, port, api_key, max_queue, alias, **opts):
    """An OpenAI-compatible server: each request is a run of the workers (see README, Serving).

    POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, GET /health.
    The options below are the defaults of every request, which may change the run's settings in
    an extra `hogwild` object and the usual sampling fields. One run at a time; Ctrl-C stops."""
    import signal
    import socket

    import hogwild_cpp
    from hogwild_cpp import BadInput, Hogwild, RunFailure, Settings
    from hogwild_cpp.errors import Unsupported

    model, _ = _model_path([model_arg], model_opt, 0)
    values = {field: opts[opt] for opt, field in _SERVE_SETTINGS.items() if opt in opts and opts[opt] is not None}
    if values.get("names"):
        values["names"] = [n.strip() for n in values["names"].split(",")]
    if values.get("rpc"):
        values["rpc"] = values["rpc"].split(",")
    try:
        settings = Settings(**values)
        settings.check()
    except BadInput as exc:
        raise InputError(str(exc))
    try:
        from hogwild_cpp.server import Server, create_app, listen
    except ImportError as exc:
        raise click.ClickException(f"serving needs fastapi and uvicorn ({exc}): pip install -e .")
    try:  # listen first: a taken port is a one-line error before the model loads
        sock = listen(host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    hogwild_cpp.set_verbose(bool(opts.get("verbose")))
    try:
        hw = Hogwild(model, settings)
    except Unsupported as exc:
        sock.close()
        raise InputError(f"{model.name} cannot run as hogwild workers: {exc}")
    except BadInput as exc:
        sock.close()
        raise InputError(str(exc))
    except RunFailure as exc:
        sock.close()
        raise click.ClickException(str(exc))
    app = create_app(hw, model_id=alias, api_key=api_key, max_queue=max_queue)
    bound = sock.getsockname()
    url = f"http://{'[' + bound[0] + ']' if sock.family == socket.AF_INET6 else bound[0]}:{bound[1]}"
    budget = "until an answer or a full context" if settings.max_steps < 0 else f"{settings.max_steps} steps"
    print(f"hogwild serve: {model.name}, {settings.workers} workers ({settings.layout}), {budget} "
          f"a request; {max_queue} may wait; API key {'required' if api_key else 'off'}\n"
          f"  {url}/v1  (OpenAI API)   {url}/health   Ctrl-C stops", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: listening on {host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    server = Server(app, log_level="info" if opts.get("verbose") else "warning", timeout_graceful_shutdown=5)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C, once uvicorn has shut down
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled, after its clean shutdown
        pass
    finally:
        sock.close()
        hw.close()
    print("hogwild serve: stopped", file=sys.stderr)


# --- eval: accuracy against budget (hogwild_cpp/eval.py) ----------------------------------------

@main.command("eval")
@click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))
@click.argument("data_arg", metavar="[DATA]", required=False)
@_model_option
@_system_option("Your own system prompt for every problem, as run's -sys: it opens the system message, before the "
                "rules when the protocol puts them there.")
@click.option("--budgets", default="256,512,1024", show_default=True, callback=_int_list,
              help="Budgets in parallel decode steps, comma-separated: one run to the largest gives them all.")
@click.option("-np", "--workers", default="1,2", show_default=True, callback=_int_list,
              help="Worker counts, comma-separated (1: one worker with the same finisher, the baseline).")
@click.option("--layout", default="combined", show_default=True, type=click.Choice(list(LAYOUTS)))
@click.option("--baseline", type=click.Choice(["independent"]), default=None,
              help="Also W independent one-worker runs (seeds seed..seed+W-1, no shared cache), majority vote.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N problems.")
@click.option("--out", "out_dir", default="eval-out", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results (results.jsonl, resumed on a rerun), summary.json/.csv, accuracy.png, report.html.")
@_ctx_option()
@_gpu_layers_option
@_threads_option
@_cache_options
@_sampling_options("Sampling seed (worker w uses seed + w; -1: a random one, printed).")
@click.option("--finisher-tokens", type=click.IntRange(1), default=None,
              help="Greedy tokens the finisher may write at each budget (default: the protocol's, 16).")
@click.option("--protocol", "protocol_file", type=click.Path(path_type=Path), help="A protocol file (see run).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_cmd(model_arg, data_arg, model_opt, system_prompt, budgets, workers, layout, baseline, limit, out_dir,
             ctx_size, gpu_layers, threads, flash_attn, cache_type_k, cache_type_v, seed, temp, top_k, top_p, min_p,
             finisher_tokens, protocol_file, quiet):
    """Accuracy against budget on DATA (JSONL with problem/question and answer/solution fields, or
    `builtin`, the default: examples/arith.jsonl) for each worker count, the paper's protocol (README,
    Evaluating). The model: MODEL or -m MODEL.

    Rerun with the same --out to resume; Ctrl-C keeps every finished problem."""
    from hogwild_cpp import BadInput, RunFailure, Settings
    from hogwild_cpp import eval as ev
    from hogwild_cpp.errors import Unsupported

    model, rest = _model_path([model_arg, data_arg], model_opt, 1)
    data = rest[0] if rest else "builtin"
    _warn_without_gpu(gpu_layers)
    try:
        settings = Settings(layout=layout, n_ctx=ctx_size, n_gpu_layers=gpu_layers, threads=threads,
                            seed=_pick_seed(seed), temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            system_prompt=system_prompt, flash_attn=flash_attn, cache_type_k=cache_type_k,
                            cache_type_v=cache_type_v,
                            finisher_tokens=finisher_tokens, protocol=protocol_file)
        settings.check()
        ev.load_data(data, limit)  # bad data: one line, before the model loads
        summary = ev.run_eval(model, data, budgets, workers, out_dir, settings, baseline=baseline, limit=limit,
                              progress=not quiet)
    except (BadInput, Unsupported) as exc:
        raise InputError(str(exc))
    except RunFailure as exc:
        raise click.ClickException(str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished problems are in {out_dir / 'results.jsonl'}; rerun to resume",
              file=sys.stderr)
        sys.exit(130)
    click.echo(ev.table(summary))
    print(f"wrote {out_dir}/summary.json, summary.csv, accuracy.png, report.html", file=sys.stderr)


if __name__ == "__main__":
    main()
