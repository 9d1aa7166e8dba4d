"""The documentation builds strictly (MkDocs: a broken link or a page missing from the nav
fails), and every page the README links to exists."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_links_resolve_and_its_first_screen_is_short():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links and all((ROOT / link).is_file() for link in links), links
    head = readme[:readme.index("## Commands")]
    assert "## Quick start" in head and "### From Python" in head
    assert len(readme.splitlines()) < 120
