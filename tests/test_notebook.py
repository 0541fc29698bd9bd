"""examples/quickstart.ipynb runs in a real Jupyter kernel and shows what it promises.

nbclient starts an IPython kernel (ipykernel), as Jupyter does, and executes every cell; a cell that
raises fails the test. Figures must reach the notebook as `image/png` outputs of the cells that show
them, and the training progress bar as a Jupyter widget (tqdm's notebook mode), not as text.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
import pytest
from conftest import needs_fashion
from nbclient import NotebookClient
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    return cell


def _pngs(cell) -> list[Image.Image]:
    out = []
    for o in cell.outputs:
        data = o.get("data", {})
        if "image/png" in data:
            out.append(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))))
    return out


def _printed(cell) -> str:
    """What the cell printed (stdout and stderr)."""
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def test_the_committed_notebook_is_clean_and_valid():
    """Outputs are made by running it, never committed: no outputs, no execution counts."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
@needs_fashion
def test_quickstart_notebook_executes_and_shows_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_FEATURE_CACHE", str(tmp_path / "feature-cache"))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel runs in tmp_path, so its run directories (runs/...) land there, not in the checkout
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    # "own-plot": the user's own pyplot figure after training; it shows only if cnnlab left matplotlib's
    # backend alone (a library call that switches it to Agg leaves this cell without a picture)
    for tag in ("augmentation-grid", "curves", "confusion", "own-plot"):
        pictures = _pngs(_tagged(nb, tag))
        assert len(pictures) == 1, f"cell '{tag}' shows {len(pictures)} PNG pictures"
        assert min(pictures[0].size) >= 150, f"cell '{tag}': a {pictures[0].size} picture"
        assert len(pictures[0].convert("L").getcolors()) > 20, f"cell '{tag}': a blank picture"

    train = _tagged(nb, "train")
    widgets = [o for o in train.outputs if WIDGET in o.get("data", {})]
    assert len(widgets) == 5, "one progress widget per epoch (tqdm's notebook mode)"
    printed = _printed(train)
    assert "\r" not in printed and "%|" not in printed  # no text bar in the notebook
    assert printed.count("train loss") == 5  # the Trainer's summary line per epoch
    assert list(tmp_path.glob("runs/*/curves.png")), "the run directory is in the kernel's working folder"

    table = _printed(_tagged(nb, "transfer"))
    for method in ("features", "baseline: raw pixels", "baseline: scratch"):
        assert f"| {method} |" in table
