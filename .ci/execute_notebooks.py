"""Execute notebooks in place and strip what changes from run to run.

usage: python .ci/execute_notebooks.py [--strip-only] notebooks/00_data.ipynb [...]

Outputs stay (nbval compares against them), and so does the widget state (a reader without a kernel, on GitHub or
nbviewer, still sees each widget's controls and picture); execution counts, cell timing metadata and the interpreter
version go, so a re-run on another machine only changes what really changed.
"""
import os
import sys
import tempfile
import time

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient


def strip(nb):
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            cell.execution_count = None
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = None
    return nb


def main(paths, execute=True):
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        if execute:
            workdir = os.path.dirname(os.path.abspath(path))
            # The kernel talks over local IPC sockets: over TCP ports, runs on a loaded machine sometimes stalled
            # with kernel and client each waiting for the other.
            km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(tempfile.mkdtemp(), "kernel"))
            try:
                NotebookClient(nb, km=km, timeout=900, kernel_name="python3", store_widget_state=True,
                               resources={"metadata": {"path": workdir}}).execute()
            finally:  # nbclient leaves a kernel it was handed running: stop it now, not when it notices we left
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
        nbformat.write(strip(nb), path)
        print(f"{path}: {'executed' if execute else 'stripped'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--strip-only"], execute="--strip-only" not in args)
