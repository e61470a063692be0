"""Every Python snippet of the README and the guides runs as written.

Each page's ```python blocks run in order in one namespace (a page's later blocks use what its earlier ones
define), in a fresh interpreter whose working folder is a temporary one, as a module (a block written as a script, under
`if __name__ == "__main__"`, defines its functions without running them). Many snippets assert their own claims
(`torch.testing.assert_close` of a converter against the closed form, `assert report.passed`), so running them
checks those claims too; the others fail on any error: a renamed argument, a changed return type, an import that
moved.

A snippet that works on the user's own objects (a trained model, its images) runs after a stated stand-in for
them, defined below, that has the type the text describes. The few blocks that need what no test machine has (a
trained CIFAR-10 checkpoint sampled at full size, a GPU) are listed with the reason, by their first line, so that
an edit of such a block has to be looked at again here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"] + sorted((ROOT / "docs" / "howto").glob("*.md")) + sorted(
    (ROOT / "docs" / "theory").glob("*.md")
)

# stand-ins for the user's objects a page's snippets name, run before its first block
STAND_INS = {
    "bits_per_dim.md": """
import torch
from sdescore.data import load_digits
from sdescore.nets import DDPMUNet
torch.manual_seed(0)
ema_model = DDPMUNet(1, base_channels=8, channel_mults=(1, 2), num_groups=4).eval()   # "your trained model"
images = torch.as_tensor(load_digits().images[:4])                                      # uint8 (B, 1, 8, 8)
""",
    "wrap_network.md": """
import torch
import sdescore as sds
from validation import random_anisotropic
_mix = random_anisotropic(d=4, n_modes=3, seed=0)
sde = sds.VPSDE(beta_min=0.1, beta_max=20.0)                                       # as the block not run defines
gen = torch.Generator().manual_seed(0)
x0 = _mix.sample(64, gen)                                                          # "your data"
x0_net = _mix.diffuse(sde).denoiser              # "your denoiser network"
""",
}

# blocks not run, by page and first line, with the reason
NOT_RUN = {
    ("wrap_network.md", "import torch"): "samples a trained CIFAR-10 U-Net (runs/cifar.pt) at full size",
    ("bits_per_dim.md", "from torch.utils.data import DataLoader, TensorDataset"): "the CIFAR-10 test set on a GPU",
}

# pages whose snippets take tens of seconds (2000 samples of three samplers; check_sampler on three SDEs)
SLOW = {"README.md", "validate_sampler.md"}


# The programs come on stdin as JSON {page: program}; each runs in a namespace of its own, as a module named
# __snippet__ (a block shown as a script, train_digits.py, defines its main() without running it), and what each
# raised comes back on stdout as JSON. One interpreter serves the pages of a test run (importing torch, sympy and
# scipy takes seconds, the snippets of most pages less).
RUNNER = """
import json, sys, traceback
failed = {}
for name, program in json.loads(sys.stdin.read()).items():
    try:
        exec(compile(program, name, "exec"), {"__name__": "__snippet__"})
    except BaseException:
        failed[name] = traceback.format_exc()[-3000:]
print("\\n" + json.dumps(failed))
"""


def _blocks(page: Path) -> list[str]:
    """The page's ```python blocks, dedented by their fence's indentation."""
    found = re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(encoding="utf-8"), re.S | re.M)
    return ["\n".join(line[len(ind):] if line.startswith(ind) else line for line in body.splitlines()) for ind, body in found]


def _program(page: Path) -> str:
    parts = [STAND_INS.get(page.name, "")]
    for i, block in enumerate(_blocks(page)):
        first = block.strip().splitlines()[0]
        if (page.name, first) not in NOT_RUN:
            parts.append(f"# --- {page.name}, block {i}\n{block}")
    return "\n".join(parts)


def _run(pages: list[Path], folder: Path) -> dict[str, str]:
    """{page name: the traceback it raised} for the pages that failed, run in one fresh interpreter in `folder`."""
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps({page.name: _program(page) for page in pages}), cwd=folder,
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rstrip().rsplit("\n", 1)[-1])


@pytest.fixture(scope="module")
def quick_failures(tmp_path_factory) -> dict[str, str]:
    pages = [page for page in PAGES if _blocks(page) and page.name not in SLOW]
    return _run(pages, tmp_path_factory.mktemp("snippets"))


def _cases():
    for page in PAGES:
        if _blocks(page):
            marks = [pytest.mark.slow] if page.name in SLOW else []
            yield pytest.param(page, id=page.name, marks=marks)


@pytest.mark.parametrize("page", list(_cases()))
def test_the_snippets_of_a_page_run(page, request, tmp_path):
    failed = _run([page], tmp_path) if page.name in SLOW else request.getfixturevalue("quick_failures")
    assert page.name not in failed, f"{page.name}: a snippet failed\n{failed[page.name]}"


def test_every_block_left_out_exists_and_every_stand_in_is_used():
    """A block left out that no page has any more (edited or moved), or a stand-in for a page without snippets,
    is a list that no longer describes the docs."""
    firsts = {(page.name, b.strip().splitlines()[0]) for page in PAGES for b in _blocks(page)}
    assert set(NOT_RUN) <= firsts, set(NOT_RUN) - firsts
    assert set(STAND_INS) <= {page.name for page in PAGES if _blocks(page)}
