"""The notebooks in notebooks/: committed without outputs, and the tutorial runs end to end and tells its story.

The tutorial is executed with nbclient in a kernel of this very interpreter (a kernel spec written into a
temporary folder: nothing is installed, nothing is fetched), against the session's empty model cache, so it
trains what it needs as a new user's first run would. Without nbclient or ipykernel the execution test is
skipped, unless the environment variable CI is set: then it fails, because CI must run it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
TUTORIAL = FOLDER / "tutorial.ipynb"


def _need(*modules: str) -> None:
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        msg = f"{', '.join(missing)} not installed (pip install -e '.[notebook]')"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the notebook test cannot run: {msg}")
        pytest.skip(msg)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    """Outputs are made by running the notebook, never committed: they go stale and bloat the history."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{path.name} cell {i} has outputs: clear them (Jupyter: Edit > Clear All Outputs) before committing"
    assert "widgets" not in nb["metadata"], f"{path.name} carries saved widget state"


def test_tutorial_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need("nbclient", "nbformat", "ipykernel")
    import nbformat
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    kernels = tmp_path / "kernels"
    (kernels / "sparsebench-test").mkdir(parents=True)
    (kernels / "sparsebench-test" / "kernel.json").write_text(json.dumps(
        {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "sparsebench (test)", "language": "python"}))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the tutorial's results folder
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend draws the figures
    nb = nbformat.read(TUTORIAL, as_version=4)
    km = KernelManager(kernel_name="sparsebench-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 4, f"the tutorial drew {images} figure(s)"

    def number(pattern: str, group: int = 1) -> float:
        found = re.search(pattern, text)
        assert found, f"the tutorial no longer prints {pattern!r}"
        return float(found.group(group))

    # The story holds, and every wrong explanation scores below the right one.
    r2 = r"two-means R² of E @ W_in: trained ([\d.]+), untrained ([\d.]+)"
    assert number(r2, 1) > number(r2, 2) + 0.2
    assert re.search(r"trained: sign -1", text), "the trained model's code is no longer the complemented one"
    assert number(r"bloom fit: hidden-code MCC ([+-][\d.]+)") > 0.9
    for wrong in ("random-code", "permuted-units", "wrong sign"):
        assert number(rf"{wrong}: hidden-code MCC ([+-][\d.]+)") < 0.2
    assert number(r"bloom fit: loss clean .* loss recovered ([+-][\d.]+)") > 0.9
    assert number(r"random-code: loss clean .* loss recovered ([+-][\d.]+)") < 0.2
    assert re.search(r"bloom loss: better fit +exp", text) and re.search(r"jl loss: better fit power", text)
    assert number(r"high-cluster: mean hash size .* hidden-code MCC ([+-][\d.]+)") < 0.2
    # Verdicts: Bloom explains the hidden code and the patch; high-cluster (the wrong sign) is caught; JL, which
    # beats its own rivals on patch, does not reach the bar there.
    bloom = re.search(r"\| bloom \| (explains|partly) \| ([^|]*)\|", text)
    assert bloom and "hidden-code: explains" in bloom.group(2) and "patch: explains" in bloom.group(2), bloom
    assert re.search(r"\| high-cluster \| no \|", text)
    jl = re.search(r"\| jl \| \w+ \| ([^|]*)\|", text)
    assert jl and "patch: insufficient" in jl.group(1), jl
