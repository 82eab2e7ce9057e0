"""The sharding notebook runs top to bottom in a real Jupyter kernel."""

import pathlib
import re

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_inspect_sharding_notebook_executes():
  notebook = nbformat.read(ROOT / "notebooks" / "inspect_sharding.ipynb", as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
  assert "model.blocks.attn.wq_dnh" in html and "gathered weights" in html
  text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
  text = re.sub(r"\x1b\[[0-9;]*m", "", text)   # rich's colour codes
  assert "P('tensor', 'fsdp')" in text
  assert "CPU 0" in text and "CPU 7" in text   # the placement drawing names the devices
