"""Lets test modules import the helpers beside them, and the suite in benchmarks/.

This holds however pytest is started (and so do spawned workers).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.mvtec_suite

import pytest  # noqa: E402  (after the path setup above, which spawned workers also need)
import torch  # noqa: E402


@pytest.fixture
def hub_dir(monkeypatch, tmp_path) -> Path:
    """An empty torch hub cache under tmp_path (via TORCH_HOME, undone after the test)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # torch.hub.set_dir() would pin a process-wide value; clearing it lets TORCH_HOME decide.
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    hub = Path(torch.hub.get_dir())
    assert hub == tmp_path / "torch_home" / "hub"
    return hub
