import sys
from pathlib import Path

# tests import the generator as `models.gguf_gen` from the repository root
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
