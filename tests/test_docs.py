"""The documentation site (docs/conf.py, scripts/docs.sh): it builds with warnings as
errors, and every internal link and image of every built page resolves.

Builds the site into a temporary folder (about 15 s). Skipped, saying why, when the
docs tools (the ``docs`` extra) are not installed, except under CI, where they must be.
"""

import importlib.util
import os
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = [m for m in ("sphinx", "myst_parser", "matplotlib")
           if importlib.util.find_spec(m) is None]
if MISSING and not os.environ.get("CI"):
    pytest.skip(f"the docs tools are not installed ({', '.join(MISSING)}): "
                'pip install -e ".[docs]" or bash scripts/setup.sh', allow_module_level=True)


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])


def _parse(path):
    p = Page()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    assert not MISSING, f"CI needs the docs tools: {MISSING} not installed"
    out = tmp_path_factory.mktemp("html")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going",
                          "-q", os.path.join(ROOT, "docs"), str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"sphinx-build -W failed:\n{run.stdout}\n{run.stderr}"
    pages = {}
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(folder, name)
                pages[os.path.normpath(path)] = _parse(path)
    return str(out), pages


def test_every_internal_link_and_image_resolves(site):
    out, pages = site
    bad, checked = [], 0
    for page, parsed in pages.items():
        for kind, refs in (("link", parsed.links), ("image", parsed.images)):
            for ref in refs:
                u = urlsplit(ref)
                if u.scheme or u.netloc or ref.startswith("mailto:"):
                    continue  # external: not checked here
                target = page if not u.path else os.path.normpath(
                    os.path.join(os.path.dirname(page), unquote(u.path)))
                checked += 1
                if not os.path.isfile(target):
                    bad.append(f"{os.path.relpath(page, out)}: {kind} {ref}: no such file")
                elif kind == "image" and os.path.getsize(target) == 0:
                    bad.append(f"{os.path.relpath(page, out)}: image {ref}: empty file")
                elif u.fragment and target.endswith(".html") and \
                        unquote(u.fragment) not in pages[target].ids:
                    bad.append(f"{os.path.relpath(page, out)}: link {ref}: no such anchor")
    assert not bad, "\n".join(bad)
    assert checked > 500


def test_the_site_has_the_spec_the_readme_the_pictures_and_the_api(site):
    out, pages = site
    spec = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "spec")) if n.endswith(".md"))
    for name in spec:
        assert os.path.join(out, "_gen", "spec", f"{name}.html") in pages, name
    readme = pages[os.path.join(out, "_gen", "readme.html")]
    assert "spec/sampling.html" in readme.links  # chapter references became links
    pictures = pages[os.path.join(out, "pictures.html")].images
    assert sorted(os.path.basename(p) for p in pictures) == [
        "augment.png", "batch.png", "sampling.png", "shards.png"]
    for p in pictures:  # drawn at build time: real pictures, not placeholders
        assert os.path.getsize(os.path.join(out, p)) > 20_000, p
    api = pages[os.path.join(out, "api.html")].ids
    for name in ("tilespec.show.augment_grid", "tilespec.loader.NumpyLoader",
                 "tilespec.records.read_records", "tilespec.dataset.Dataset.balance"):
        assert name in api, name
