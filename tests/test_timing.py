"""The timing block at the end of `run` and `complete` (issue 17, item 3): the same lines from the same code,
on stderr after the answer; not with --quiet or --json, where the done event carries the numbers."""

import json
import re

import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp import native
from hogwild_cpp.timing import GpuPeak, PeakMemory, Timing

PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"
FAST = ["--temp", "0", "-t", "1", "-c", "8192"]
RUN_LINES = ["load", "prompt", "generated", "workers", "steps", "memory", "total"]


def invoke(*args, input=PROBLEM):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def block(stderr: str) -> dict[str, str]:
    """The timing block's lines on stderr, by name."""
    return dict(re.findall(r"^(load|prompt|generated|workers|steps|memory|total): +(.*)$", stderr, re.MULTILINE))


def test_the_block_names_every_number_a_person_asks_for():
    t = Timing(load_s=1.5, prompt_tokens=300, prompt_s=0.5, generated={"Alice": 99, "Bob": 1}, generate_s=2.0,
               steps=50, total_s=4.25, peak_rss=512 * 2 ** 20, worker_steps={"Alice": 3, "Bob": 1},
               gpus=[GpuPeak("CUDA0", 2 ** 30, 3 * 2 ** 30, 80 * 2 ** 30)])
    assert t.lines() == [
        "load:      1.50 s",
        "prompt:    300 tokens in 0.50 s (600.0 tok/s)",
        "generated: 100 tokens in 2.00 s (50.0 tok/s)",
        "workers:   Alice 99 tokens in 3 steps, Bob 1 token in 1 step",
        "steps:     50 decode steps, 40.0 ms a step",
        "memory:    peak RSS 512.0 MiB; CUDA0 3.0 GiB of 80.0 GiB in use at peak (+2.0 GiB since the start)",
        "total:     4.25 s"]
    d = t.to_dict()
    assert d["generated_tokens"] == 100 and d["ms_per_step"] == 40.0 and d["gpus"][0]["peak"] == 3 * 2 ** 30


def test_gpu_memory_is_the_peak_seen_and_absent_without_a_gpu(monkeypatch):
    assert native.gpu_memory() == []  # this CPU build: the block has no GPU part, and nothing fails
    assert PeakMemory().gpus == {}
    used = iter([1, 5, 3, 9])  # GiB in use at each look
    monkeypatch.setattr(native, "gpu_memory", lambda: [("CUDA0", (80 - next(used)) * 2 ** 30, 80 * 2 ** 30)])
    now = [0.0]
    memory = PeakMemory(interval=0.5, clock=lambda: now[0])  # before the load: 1 GiB
    memory.sample()                                           # 5
    memory.sample()                                           # too soon: not asked
    now[0] = 1.0
    memory.sample()                                           # 3
    memory.sample(force=True)                                 # 9
    g = memory.gpus["CUDA0"]
    assert (g.before, g.peak, g.total) == (2 ** 30, 9 * 2 ** 30, 80 * 2 ** 30)
    assert PeakMemory.peak_rss() > 10 * 2 ** 20  # this process holds more than 10 MiB


def test_run_prints_the_block_on_stderr_after_the_answer(one_layer):
    res = invoke("run", one_layer, "-", "-n", "8", *FAST, "--names", "Ann,Ben")
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip().splitlines()[-1].startswith("answer: ") and "load:" not in res.stdout
    lines = block(res.stderr)
    assert list(lines) == RUN_LINES and res.stderr.rstrip().endswith(f"total:     {lines['total']}")
    assert re.fullmatch(r"Ann 8 tokens in \d+ steps?, Ben 8 tokens in \d+ steps?", lines["workers"])
    assert re.fullmatch(r"16 tokens in [\d.]+ s \([\d.]+ tok/s\)", lines["generated"])
    assert re.fullmatch(r"8 decode steps, [\d.]+ ms a step", lines["steps"])
    # no GPU in this build; the peak is this process's, and in-process (CliRunner) it includes earlier tests'
    assert re.fullmatch(r"peak RSS [\d.]+ (MiB|GiB)", lines["memory"])


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_no_block_with_quiet_or_json_and_json_carries_its_numbers(one_layer, flag):
    res = invoke("run", one_layer, "-", "-n", "8", *FAST, flag)
    assert res.exit_code == 3 and block(res.stderr) == {}, res.output
    if flag == "--json":
        timing = json.loads(res.stdout.splitlines()[-1])["timing"]
        assert timing["steps"] == 8 and timing["generated"] == {"Alice": 8, "Bob": 8}
        assert timing["generated_tokens"] == 16 and timing["prompt_tokens"] > 0 and timing["peak_rss"] > 0
        assert timing["total_s"] >= timing["load_s"] + timing["prompt_s"] + timing["generate_s"] > 0
        assert set(timing["worker_steps"]) == {"Alice", "Bob"} and timing["gpus"] == []


def test_complete_prints_the_same_block_for_its_one_sequence(tmp_path, one_layer):
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    res = invoke("complete", one_layer, prompt, "-n", "8", "-t", "1", "--temp", "0")
    assert res.exit_code == 0, res.output
    lines = block(res.stderr)
    assert list(lines) == [n for n in RUN_LINES if n != "workers"]  # run's lines, but for no workers
    assert re.fullmatch(r"8 tokens in [\d.]+ s \([\d.]+ tok/s\)", lines["generated"])
    assert re.fullmatch(r"8 decode steps, [\d.]+ ms a step", lines["steps"])

