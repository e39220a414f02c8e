"""The documentation: the site builds strictly and offline, and the README stays short with working links.

The strict build fails on any warning: a page missing from the nav, a link to a page or anchor that does not
exist, or a reference generator (``docs/hooks/reference.py``) that fails. The built pages must load nothing from
another host, so the site reads the same with no network.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200
#: ``[text](target)`` in Markdown, with an optional "title"; images (``![alt](src)``) match too.
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: What a page makes the browser fetch: script sources, stylesheets, fonts, images, frames.
_FETCHED = re.compile(r"<(?:script|img|iframe|source)\b[^>]*\bsrc=\"([^\"]+)\"|<link\b[^>]*\bhref=\"([^\"]+)\"")


def test_the_site_builds_strictly_and_loads_nothing_from_another_host(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # Material's banner about its successor is noise in a failure's output.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index.html", "getting-started/index.html", "reference/cli/index.html",
                 "reference/api/index.html", "reference/config/index.html"):
        assert (site / page).is_file(), f"the site has no {page}"
    remote = sorted({f"{page.relative_to(site)}: {url}" for page in site.rglob("*.html")
                     for match in _FETCHED.finditer(page.read_text(encoding="utf-8"))
                     for url in match.groups() if url and re.match(r"(?:https?:)?//", url)})
    assert not remote, "pages load from another host:\n" + "\n".join(remote)


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES}, the rest in docs/"


def test_every_relative_link_in_the_readme_names_a_file_that_exists() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [target for target in _LINK.findall(text)
               if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]
    assert targets, "the README links to no file at all: its table of the docs is missing"
    missing = [target for target in targets if not (ROOT / target.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
