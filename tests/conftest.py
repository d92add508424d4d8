import sys
from pathlib import Path

# the stage scripts live at the top of the repo, not in a package: make them importable under plain `pytest`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

common.set_cpu_threads()  # the tests' models are tiny: one thread, as every stage runs by default
