"""What hogwild refuses, and why: models whose cached tokens cannot be seen at another position.

A hogwild view moves a cached token by rotating its K (RoPE). Without RoPE, with M-RoPE (several
position components per token), or with memory that is not a KV cache of tokens (a recurrent state,
or a hybrid of both) there is nothing to rotate, so the patched llama.cpp refuses to create a
hogwild context, and the CLI says why in one line. Stock contexts of the same models still work.
"""

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp.native import Context, ContextConfig, Model, Unsupported
from models import gguf_gen

PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"

# writer, the reason the refusal must give
REFUSED = {
    "gpt2": (gguf_gen.write_gpt2_gguf, "no RoPE"),                 # learned absolute positions
    "qwen2vl": (gguf_gen.write_qwen2vl_gguf, "M-RoPE"),            # rotation by several position components
    "mamba": (gguf_gen.write_mamba_gguf, "recurrent memory"),      # a state per sequence, no KV cells
    "lfm2": (gguf_gen.write_lfm2_gguf, "hybrid memory"),           # KV cache and recurrent state
}


def config(hogwild: bool) -> ContextConfig:
    return ContextConfig(n_ctx=256, n_seq_max=2, n_threads=2, hogwild=hogwild)


def check_refused_but_stock_works(path, reason: str) -> None:
    """The hogwild context is refused with `reason`; a stock one over the same model decodes."""
    model = Model(path)
    try:
        with pytest.raises(Unsupported, match=reason) as refusal:
            Context(model, config(hogwild=True))
        assert "\n" not in str(refusal.value)
        stock = Context(model, config(hogwild=False))
        logits = stock.decode([(t, i, 0, i == 4) for i, t in enumerate(range(10, 15))])
        assert len(logits) == 1 and np.isfinite(logits[0]).all() and logits[0].std() > 0
        stock.close()
    finally:
        model.close()


def test_a_model_without_rope_is_refused(tmp_path):
    check_refused_but_stock_works(gguf_gen.write_gpt2_gguf(tmp_path / "gpt2.gguf"), "no RoPE")


def test_an_m_rope_model_is_refused(tmp_path):
    """Qwen2-VL rotates by several position components per token; one delta per cell cannot move it."""
    check_refused_but_stock_works(gguf_gen.write_qwen2vl_gguf(tmp_path / "qwen2vl.gguf"), "M-RoPE")


def test_a_recurrent_model_is_refused(tmp_path):
    """Mamba keeps one state per sequence, not one cell per token: no token can sit in another view."""
    check_refused_but_stock_works(gguf_gen.write_mamba_gguf(tmp_path / "mamba.gguf"), "recurrent memory")


def test_a_hybrid_model_is_refused(tmp_path):
    """LFM2's attention layers have a KV cache, but its conv layers keep a recurrent state per sequence."""
    check_refused_but_stock_works(gguf_gen.write_lfm2_gguf(tmp_path / "lfm2.gguf"), "hybrid memory")


@pytest.mark.parametrize("arch", list(REFUSED))
def test_cli_refuses_an_unsupported_model_with_the_reason(tmp_path, arch):
    writer, reason = REFUSED[arch]
    path = writer(tmp_path / f"{arch}.gguf")
    res = CliRunner().invoke(cli.main, ["run", str(path), "-", "-n", "4"], input=PROBLEM)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error: ") and f"{arch}.gguf" in lines[0] and reason in lines[0], lines[0]
