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


def short_rules_file(directory) -> Path:
    """SHORT_RULES written as a protocol file in `directory`."""
    path = Path(directory) / "short.toml"
    path.write_text(SHORT_RULES)
    return path


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """One layer: a token's KV depends on token and position only, so every view replays exactly."""
    from models import gguf_gen

    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("one-layer") / "one.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.3, n_ctx_train=8192)
