import sys
from pathlib import Path

# tests import the generator as `models.gguf_gen` from the repository root
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

# short rules, for speed: the byte-level test vocabulary makes the default rules ~2000 tokens, and every
# replayed record re-decodes its whole view; the headers, markers and labels stay the default ones
SHORT_RULES = """
[prompt]
team = "{n} of you ({names}) share one workspace. {layout}"
solo = "Solve it in steps."
[prompt.layouts]
combined = "History, the others' steps, then yours."
stepwise = "History, then yours."
contiguous = "Workspaces, yours last."
"""


# the command-line tests' problem, fast flags and helpers
PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"
FAST = ["--temp", "0", "-t", "1", "-c", "8192"]


def invoke(*args, input=PROBLEM):
    """`hogwild ARGS` in this process (click's runner), PROBLEM on stdin."""
    from click.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def one_error(res, message):
    """The command failed on bad input: exit 2, one 'Error:' line with `message`, no traceback."""
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], res.output


def short_rules_file(directory) -> Path:
    """SHORT_RULES written as a protocol file in `directory`."""
    path = Path(directory) / "short.toml"
    path.write_text(SHORT_RULES)
    return path


@pytest.fixture
def run_prompts(monkeypatch) -> list[str]:
    """The prompt each run's workers read (protocol.chat_prompt's results), in order, while the test runs."""
    from hogwild_cpp import protocol

    prompts, real = [], protocol.chat_prompt

    def chat_prompt(*args, **kwargs):
        prompts.append(real(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(protocol, "chat_prompt", chat_prompt)
    return prompts


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """One layer: a token's KV depends on token and position only, so every view replays exactly."""
    from models import gguf_gen

    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("one-layer") / "one.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.3, n_ctx_train=8192)
