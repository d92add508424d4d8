import contextlib
import os
import sys
from pathlib import Path

# the stage scripts live at the top of the repo, not in a package: make them importable under plain `pytest`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
import pytest  # noqa: E402

# one thread here and in every process a test starts: the tests' models are tiny, and a run and the run it is
# compared with (resumed, under torchrun) must split their sums alike, whatever the machine's load
os.environ["OMP_NUM_THREADS"] = "1"
common.set_cpu_threads()


@pytest.fixture
def killed_at_first_checkpoint(monkeypatch):
    """
    with killed_at_first_checkpoint(): stage.main(...) -- the stage writes its first checkpoint whole and then dies
    (KeyboardInterrupt), as a run stopped right after it; after the block, checkpoints are written as usual.
    """
    @contextlib.contextmanager
    def killed():
        real_save = common.save_checkpoint

        def save_then_crash(path, obj):
            real_save(path, obj)
            raise KeyboardInterrupt

        monkeypatch.setattr(common, "save_checkpoint", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            yield
        monkeypatch.setattr(common, "save_checkpoint", real_save)

    return killed
