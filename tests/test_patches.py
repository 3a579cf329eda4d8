"""The drafts in patches/next/, if any (patches not yet checked on the hardware they are for, which `make` does not
apply) still apply on top of the series, so that a session with that hardware can try them in one call
(`HOGWILD_GPU_DRAFTS='patches/next/*.patch' bash benchmarks/gpu_check.sh ...`)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.search(r"^LCP_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
SRC = ROOT / "build" / f"llama_cpp_python-{VERSION}"  # unpacked and patched by `make build`
DRAFTS = sorted((ROOT / "patches" / "next").glob("*.patch"))


@pytest.mark.parametrize("draft", DRAFTS, ids=[d.name for d in DRAFTS])
def test_a_draft_applies_on_top_of_the_series(draft):
    if not (SRC / "vendor").is_dir():
        pytest.skip(f"no patched source tree in {SRC} (make build makes it)")
    r = subprocess.run(["patch", "-d", str(SRC), "-p1", "--dry-run", "--forward", "--batch", "--fuzz=0", "-i", str(draft)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checking file" in r.stdout  # it touched files: not an empty or misnamed draft
