"""llama.cpp's flag names, the same on every subcommand (issue 17): -m/-f/-p/-sys, -n, -c, -ngl, -t,
sampling, -fa/-ctk/-ctv, --color, --verbose-prompt, and the old spellings that still work."""

import json
import re

import click
import pytest

import cli
from conftest import FAST, PROBLEM, invoke, one_error, short_rules_file
from hogwild_cpp import BadInput, cpu, offload
from models import gguf_gen



@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """The one-layer model with a ChatML template, so that system messages show."""
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("chat") / "chat.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.3, chat_template="chatml")


# --- -m/--model, -f/--file, -p/--prompt ----------------------------------------------------------------

def test_model_and_prompt_as_options_or_as_arguments_run_the_same(one_layer, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    forms = {"arguments": [one_layer, prompt], "options": ["-m", one_layer, "-f", prompt],
             "-m and PROMPT_FILE": ["-m", one_layer, prompt], "-p": ["-m", one_layer, "-p", PROBLEM],
             "stdin": [one_layer, "-f", "-"]}
    texts = {}
    for name, args in forms.items():
        out = tmp_path / f"{len(texts)}.json"
        res = invoke("run", *args, "-n", "4", *FAST, "--output", out)
        assert res.exit_code == 0, (name, res.output)
        texts[name] = json.loads(out.read_text())["texts"]
    assert all(t == texts["arguments"] for t in texts.values()), texts


@pytest.mark.parametrize("args, message", [
    ([], "no model: give -m MODEL.gguf"),
    (["-m", "{model}", "{model}", "{prompt}"], "the model is given twice"),
    (["-m", "{model}"], "no prompt: give -f FILE"),
    (["{model}", "{prompt}", "-f", "{prompt}"], "the prompt is given twice"),
    (["-m", "{model}", "-f", "{prompt}", "-p", "2+2"], "the prompt is given twice"),
    (["-m", "{model}", "-p", " \r\n"], "the prompt is empty"),
    (["-m", "{tmp}/nope.gguf", "-p", "2+2"], "model {tmp}/nope.gguf does not exist"),
])
@pytest.mark.parametrize("command", ["run", "complete"])
def test_the_model_and_the_prompt_are_given_once_or_a_one_line_error(one_layer, tmp_path, command, args, message):
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    fill = dict(model=one_layer, prompt=prompt, tmp=tmp_path)
    res = invoke(command, *[a.format(**fill) for a in args])
    one_error(res, message.format(**fill))


@pytest.mark.parametrize("command", ["bench", "eval", "serve"])
def test_bench_eval_and_serve_take_the_model_as_m_too(one_layer, command):
    one_error(invoke(command), "no model: give -m MODEL.gguf")
    after = ["data.jsonl"] if command == "eval" else []  # eval: MODEL DATA
    one_error(invoke(command, "-m", one_layer, one_layer, *after), "the model is given twice")


def test_eval_takes_data_after_m(one_layer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    one_error(invoke("eval", "-m", one_layer, bad, "--out", tmp_path / "o"), "bad.jsonl")


# --- the same flags everywhere ------------------------------------------------------------------------

SHARED = {  # flag -> the subcommands that must have it, meaning the same thing
    "-m": ["run", "complete", "bench", "eval", "serve"],
    "-c": ["run", "complete", "bench", "eval", "serve"],
    "-ngl": ["run", "complete", "bench", "eval", "serve"],
    "-t": ["run", "complete", "bench", "eval", "serve", "rpc-server"],
    "-s": ["run", "complete", "eval", "serve"], "--temp": ["run", "complete", "eval", "serve"],
    "--top-k": ["run", "complete", "eval", "serve"], "--top-p": ["run", "complete", "eval", "serve"],
    "--min-p": ["run", "complete", "eval", "serve"],
    "-fa": ["run", "complete", "eval", "serve", "bench"], "-ctk": ["run", "complete", "eval", "serve", "bench"],
    "-ctv": ["run", "complete", "eval", "serve", "bench"],
    "-p": ["run", "complete"], "-f": ["run", "complete"], "-sys": ["run", "complete", "serve", "eval"],
}


def _option(command: str, flag: str):
    found = [p for p in cli.main.commands[command].params if flag in getattr(p, "opts", [])]
    assert found, f"{command} has no {flag}"
    return found[0]


@pytest.mark.parametrize("flag", list(SHARED))
def test_a_flag_is_spelled_and_typed_the_same_on_every_subcommand(flag):
    options = {c: _option(c, flag) for c in SHARED[flag]}
    spellings = {c: tuple(o.opts) for c, o in options.items()}
    assert len(set(spellings.values())) == 1, spellings
    if flag != "-fa":  # bench's -fa adds `both` (a row with and a row without)
        kinds = {c: (o.type.name, o.default) for c, o in options.items()}
        assert len(set(kinds.values())) == 1, kinds


def test_n_is_steps_on_run_and_tokens_on_complete_and_both_take_minus_one():
    run, complete = _option("run", "-n"), _option("complete", "-n")
    assert "--n-predict" in run.opts and "--n-predict" in complete.opts
    assert "tokens per worker" in run.help and "-1: until an answer or a full context" in run.help
    assert complete.help.startswith("Tokens to generate (-1:")


@pytest.mark.parametrize("command, old, new", [("complete", "--n-ctx", "-c"), ("bench", "--ctx", "-d"),
                                               ("run", "--no-color", "--color")])
def test_old_spellings_still_work_but_are_not_in_the_help(command, old, new):
    help_text = invoke(command, "--help").output
    assert new in help_text and not re.search(rf"{old}(?![-\w])", help_text)
    spellings = {o for p in cli.main.commands[command].params for o in getattr(p, "opts", [])}
    assert old in spellings


@pytest.mark.parametrize("command, typo, meant", [("run", "--colour", "--color"), ("run", "--no-colr", "--color"),
                                                  ("complete", "--n-ct", None), ("bench", "--ct", None)])
def test_a_mistyped_flag_is_told_only_spellings_the_help_shows(command, typo, meant):
    """click suggests from every name, so `--colour` got the hidden `--no-color`; now only shown names."""
    res = invoke(command, typo)
    one_error(res, f"No such option '{typo}'")
    error = next(line for line in res.output.splitlines() if line.startswith("Error:"))
    suggested = set(re.findall(r"'(-[\w-]+)'", error)) - {typo}
    unlisted = {o for p in cli.main.commands[command].params if isinstance(p, click.Option)
                for o in p.opts if p.hidden or o in getattr(p, "old", ())}
    assert suggested and not suggested & unlisted, error
    assert meant is None or meant in suggested, error


def test_bench_takes_llama_bench_depths_and_the_old_ctx(tmp_path):
    tiny = gguf_gen.write_llama_gguf(tmp_path / "tiny.gguf", n_embd=64, n_head=2, n_head_kv=1, n_layer=2, seed=3)
    rows = {}
    for flag in ("-d", "--ctx"):
        out = tmp_path / f"{flag.strip('-')}.json"
        res = invoke("bench", "-m", tiny, "-np", "1", flag, "64", "--steps", "1", "-t", "1", "--json", out)
        assert res.exit_code == 0, res.output
        rows[flag] = [(r["ctx"], r["workers"]) for r in json.loads(out.read_text())["rows"]]
    assert rows["-d"] == rows["--ctx"] == [(64, 1)]


# --- -n -1 ----------------------------------------------------------------------------------------------

def test_run_n_minus_one_goes_on_until_the_context_is_full(one_layer, tmp_path):
    out = tmp_path / "out.json"
    res = invoke("run", one_layer, "-", "-np", "1", "-n", "-1", "-c", "512", "--temp", "0", "-t", "1",
                 "--protocol", short_rules_file(tmp_path), "--output", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["reason"] == "ctx_full" and data["steps"] > 100 and data["settings"]["max_steps"] == -1


def test_complete_n_minus_one_goes_on_until_the_context_is_full(tmp_path):
    tiny = gguf_gen.write_llama_gguf(tmp_path / "tiny.gguf", dtype="q8_0")  # its greedy text never ends early
    res = invoke("complete", tiny, "-p", "Once upon a time", "-n", "-1", "-c", "256", "--temp", "0", "-t", "1")
    assert res.exit_code == 0, res.output
    n_prompt = int(re.search(r"prompt:\s+(\d+) tokens", res.stderr).group(1))
    n_generated = int(re.search(r"generated:\s+(\d+) tokens", res.stderr).group(1))
    assert n_prompt + n_generated == 256


# --- -sys and --verbose-prompt ----------------------------------------------------------------------------

def raw_lines(stderr: str) -> list[str]:
    return stderr.split("number of tokens in prompt = ")[1].splitlines()[1:]


def _shown_prompt(stderr: str) -> tuple[str, int, list[str]]:
    """--verbose-prompt's output: the prompt, the token count it states, and the token lines."""
    prompt = re.search(r"^prompt: '(.*?)'\nnumber of tokens", stderr, re.MULTILINE | re.DOTALL).group(1)
    count = int(re.search(r"number of tokens in prompt = (\d+)", stderr).group(1))
    return prompt, count, re.findall(r"^ *\d+ -> '", stderr, re.MULTILINE)  # a piece may hold a newline


@pytest.mark.parametrize("where", ["user", "system"])
def test_run_system_prompt_opens_the_system_message_and_verbose_prompt_shows_every_token(chat, tmp_path, where):
    res = invoke("run", chat, "-p", PROBLEM, "-sys", "Answer in French.", "--instructions-in", where,
                 "--verbose-prompt", "-n", "2", *FAST, "--protocol", short_rules_file(tmp_path))
    assert res.exit_code == 0, res.output
    prompt, count, tokens = _shown_prompt(res.stderr)
    rules = "2 of you (Alice and Bob) share one workspace."
    if where == "user":
        assert prompt.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\n")
        assert rules in prompt.split("<|im_start|>user")[1]
    else:
        assert prompt.startswith(f"<|im_start|>system\nAnswer in French.\n\n{rules}")
    assert PROBLEM in prompt and len(tokens) == count > len(prompt) // 4  # byte-level vocabulary


def test_complete_system_prompt_and_verbose_prompt(chat):
    res = invoke("complete", chat, "-p", "Hi", "-sys", "Be brief.", "--verbose-prompt", "-n", "2", "--temp", "0",
                 "-t", "1")
    assert res.exit_code == 0, res.output
    prompt, count, tokens = _shown_prompt(res.stderr)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokens) == count and raw_lines(res.stderr)[0] == "     1 -> '<s>'"  # add_special's <s> first
    raw = invoke("complete", chat, "-p", "Hi", "-sys", "Be brief.", "--raw", "--verbose-prompt", "-n", "2", "-t", "1")
    assert _shown_prompt(raw.stderr)[0] == "Be brief.\n\nHi"


# --- complete as a like-for-like baseline: -fa, -ctk, -ctv -------------------------------------------------

def test_complete_takes_runs_cache_settings(one_layer):
    res = invoke("complete", one_layer, "-p", "Hi", "-n", "3", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0",
                 "-t", "1", "--temp", "0")
    assert res.exit_code == 0, res.output
    one_error(invoke("complete", one_layer, "-p", "Hi", "-fa", "off", "-ctv", "q8_0"),
              "a quantized V cache (q8_0) needs flash attention")


# --- -ngl N|auto|all --------------------------------------------------------------------------------------

def test_gpu_layers_take_a_number_auto_or_all(one_layer):
    import hogwild_cpp

    one_error(invoke("run", one_layer, "-", "-ngl", "lots"), "'lots' is not a number of layers, auto or all")
    auto = invoke("run", one_layer, "-", "-n", "2", *FAST, "-ngl", "auto")
    assert auto.exit_code == 0 and "warning" not in auto.output, auto.output  # without a GPU: 0, silently
    every = invoke("run", one_layer, "-", "-n", "2", *FAST, "-ngl", "all")
    assert every.exit_code == 0, every.output
    if not hogwild_cpp.gpu_offload_supported():  # no GPU and no RPC server added (the CPU machine)
        assert "warning: -ngl all ignored" in every.output
    else:
        assert "warning" not in every.output, every.output


def test_auto_offload_fits_the_layers_that_fit_in_free_memory():
    mib = 1 << 20
    reserve = lambda free: free * (1 - offload.RESERVE_SHARE) - offload.RESERVE_BYTES  # noqa: E731
    # 32 layers + output of 33 MiB each (no KV): all fit in plenty, none in too little, and the count between
    assert offload.layers_that_fit(33 * 33 * mib, 32, 0, 80 << 30) == 33
    assert offload.layers_that_fit(33 * 33 * mib, 32, 0, 512 * mib) == 0
    assert offload.layers_that_fit(33 * 33 * mib, 32, 0, 1 << 30) == int(reserve(1 << 30) // (33 * mib))
    # the KV cache is spread over the blocks: 32 MiB of it adds 1 MiB a layer
    assert offload.layers_that_fit(33 * 33 * mib, 32, 32 * mib, 1 << 30) == int(reserve(1 << 30) // (34 * mib))


def test_auto_offload_reads_the_models_shape_and_the_devices_free_memory(one_layer, monkeypatch):
    from hogwild_cpp import native

    if native.gpu_free_memory() == 0:  # no GPU here: auto is 0, and a model loaded with it has none
        assert offload.fit_gpu_layers(one_layer) == 0
        assert native.Model(one_layer, n_gpu_layers="auto").n_gpu_layers == 0
    size = one_layer.stat().st_size
    kv = 8192 * 1 * 2 * (32 + 32) * 2  # n_ctx_train cells x 1 layer x 2 KV heads x (K 32 + V 32) x f16
    per_layer = size / 2 + kv
    monkeypatch.setattr(native, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(native, "gpu_free_memory", lambda: int(offload.RESERVE_BYTES / 0.9 + per_layer * 1.5 / 0.9))
    assert offload.fit_gpu_layers(one_layer) == 1  # room for one of its two layers (the block; not the output)
    monkeypatch.setattr(native, "gpu_free_memory", lambda: 0)
    assert offload.fit_gpu_layers(one_layer) == 0
    text = one_layer.with_name("text.gguf")
    text.write_text("<html>not a model</html>")
    with pytest.raises(BadInput, match="is not a GGUF file"):
        offload.gguf_metadata(text)


# --- -t: the physical cores -------------------------------------------------------------------------------

def test_threads_default_to_the_physical_cores_this_process_may_use(tmp_path):
    for i, siblings in enumerate(["0,2", "1,3", "0,2", "1,3"]):  # two cores, two hyperthreads each
        (tmp_path / f"cpu{i}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{i}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    assert cpu.physical_cores(tmp_path, allowed={0, 1, 2, 3}) == 2
    assert cpu.physical_cores(tmp_path, allowed={0, 2}) == 1  # both hyperthreads of one core
    assert cpu.physical_cores(tmp_path, allowed={1, 2}) == 2
    assert cpu.physical_cores(tmp_path / "none", allowed={0, 1, 2}) == 3  # no topology: the CPUs allowed
    assert 1 <= cpu.physical_cores() <= len(__import__("os").sched_getaffinity(0))


# --- --color on|off|auto ---------------------------------------------------------------------------------

def test_color_on_off_auto_and_no_color(one_layer, monkeypatch):
    def colored(*flags):
        res = invoke("run", one_layer, "-", "-n", "3", *FAST, *flags)
        assert res.exit_code == 0, res.output
        return "\x1b[" in res.stdout

    assert colored("--color", "on")
    assert not colored("--color", "off") and not colored("--no-color") and not colored()  # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli._use_color("auto", False, tty=True) is False and cli._use_color("on", False, tty=True) is True
    monkeypatch.delenv("NO_COLOR")
    assert cli._use_color("auto", False, tty=True) is True and cli._use_color("auto", False, tty=False) is False
    assert cli._use_color("auto", True, tty=True) is False and cli._use_color("off", False, tty=True) is False


# --- the README -------------------------------------------------------------------------------------------

def test_every_option_of_every_subcommand_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    def documented(option) -> bool:
        shown = [o for o in option.opts if o not in getattr(option, "old", ())]
        return any(re.search(re.escape(o) + r"(?![-\w])", readme) for o in shown)

    missing = [(name, p.opts) for name, command in cli.main.commands.items() for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not documented(p)]
    assert not missing
