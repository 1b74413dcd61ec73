"""Every course notebook (and every executable guide) runs from top to bottom and draws."""

import glob
import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "docs", "course", "*.md"))) + [
    os.path.join(ROOT, "docs", "guides", "own_code.md")]

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.relpath(p, ROOT))
def test_notebook_runs(path):
  if "course" in path and not os.path.isdir(os.path.join(ROOT, "..", "shared", "datasets")):
    pytest.skip("needs ../shared/datasets")
  nb = jupytext.read(path)
  assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
      "outputs are not committed")
  start = time.time()
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()   # raises CellExecutionError on any error
  print(f"{os.path.relpath(path, ROOT)}: {time.time() - start:.0f} s")
  if "course" in path:
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "a course notebook draws at least one figure"
