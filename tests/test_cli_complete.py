"""`hogwild complete` prints a greedy completion; user mistakes are one-line errors, exit 2."""

from click.testing import CliRunner

from cli import main
from models.gguf_gen import write_llama_gguf


def test_complete_prints_the_same_greedy_text_twice(tmp_path):
    model = write_llama_gguf(tmp_path / "tiny.gguf", dtype="q8_0")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Three apples and four pears")
    runs = [CliRunner().invoke(main, ["complete", str(model), str(prompt), "-n", "8", "-t", "1"])
            for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0], runs[0].output
    assert runs[0].stdout == runs[1].stdout


def test_complete_refuses_a_missing_model_with_exit_code_2(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hi")
    result = CliRunner().invoke(main, ["complete", str(tmp_path / "nope.gguf"), str(prompt)])
    assert result.exit_code == 2
    assert "does not exist" in result.output
