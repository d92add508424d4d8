import os
import sys
from pathlib import Path

# the stage scripts live at the top of the repo, not in a package: make them importable under plain `pytest`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

# one thread here and in every process a test starts: the tests' models are tiny, and a run and the run it is
# compared with (resumed, under torchrun) must split their sums alike, whatever the machine's load
os.environ["OMP_NUM_THREADS"] = "1"
common.set_cpu_threads()
