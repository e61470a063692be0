"""The documentation site builds with `mkdocs build --strict`, offline, and cites only tests and checks that exist.

--strict turns every warning into an error: a link to a missing page, image or anchor, an API cross-reference
such as [VESDE][sdescore.sde.VESDE] that resolves to nothing, a page missing from the nav, and mkdocstrings'
warnings on docstrings (an Args entry naming no parameter of the function). So a broken reference anywhere in
docs/ or in a docstring fails the build test. It runs with every HTTP(S) proxy pointed at a closed local port:
a plugin that fetched anything at build time (an inventory, a font, a script) would fail instead of passing only
on a machine with network access.

Each theory page says which test verifies each statement ("Verified by"); a renamed or deleted test, or a check
of `python -m validation` that no longer exists, would leave the page citing nothing, which the second test
catches without building the site.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_site_builds_strictly_and_offline(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e .[docs]")
    env = dict(os.environ)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there, so a fetch fails at once
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[var] = closed
    for var in ("NO_PROXY", "no_proxy"):
        env.pop(var, None)
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2.0 (printed, not a warning; kept out of the log)
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    problems = "\n".join(line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "Error" in line)
    assert proc.returncode == 0, f"mkdocs build --strict failed (exit {proc.returncode}):\n{problems or log[-4000:]}"
    # the build wrote the pages, and the API reference was rendered from the docstrings
    assert (site / "index.html").is_file()
    api = (site / "api" / "sde" / "index.html").read_text(encoding="utf-8")
    assert 'id="sdescore.sde.VESDE"' in api, "the API reference of sdescore.sde lacks VESDE: mkdocstrings did not render"


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return names


def test_every_test_and_check_the_docs_cite_exists():
    from validation.checks import CHECKS

    tests = _defined_tests()
    missing = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        cited = set(re.findall(r"`(?:tests/test_\w+\.py::)?(test_\w+)`", text)) | set(re.findall(r"::(test_\w+)", text))
        missing += [f"{page.relative_to(ROOT)}: test {name}" for name in sorted(cited - tests)]
        # "the check `losses`", "the checks `reverse_sde`, `pc_sampler` and `sde_weak_order`"
        for group in re.findall(r"\bchecks?\s+((?:`\w+`(?:,\s*|\s+and\s+)?)+)", text):
            missing += [f"{page.relative_to(ROOT)}: check {c}" for c in re.findall(r"`(\w+)`", group) if c not in CHECKS]
    assert len(tests) > 100, "found too few tests: the pattern that collects them is broken"
    assert not missing, "the docs cite tests or validation checks that do not exist:\n" + "\n".join(missing)
