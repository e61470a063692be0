"""Set up sdescore in the current Python environment.

Installs torch==2.13.0 first when no torch is importable (an unpinned torch would pull the newest build): the
CPU wheel where pip's configuration offers one (this project's machines keep it in a local wheel store); from
PyPI on Linux it is the CUDA build, so a CPU-only machine elsewhere installs torch from
https://download.pytorch.org/whl/cpu first. It never replaces a torch that is already there (a GPU user keeps
their CUDA build),
then installs sdescore in editable mode with the extras named on the command line (default: test,docs: the
test suite builds the documentation site with `mkdocs build --strict`).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args], check=True)


def main() -> None:
    extras = ",".join(sys.argv[1:]) or "test,docs"
    if importlib.util.find_spec("torch") is None:
        print("install: no torch found; installing torch==2.13.0", flush=True)
        pip("torch==2.13.0")
    else:
        import torch

        print(f"install: keeping the installed torch {torch.__version__}", flush=True)
    pip("-e", f"{ROOT}[{extras}]")
    print(f"install: sdescore[{extras}] installed", flush=True)


if __name__ == "__main__":
    main()
