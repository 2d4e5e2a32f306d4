"""Sphinx configuration of the tilespec documentation site (scripts/docs.sh builds it).

Sources: the spec chapters (spec/*.md) and README.md, copied at build time into
docs/_gen/ with their plain-text references to chapters (``spec/sampling.md``) turned
into links; the pictures of spec/pictures.md, drawn at build time from the built-in
synthetic dataset by tilespec.show; the API reference from the reference's docstrings.
"""

import os
import re
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this build's own process only

project = "tilespec"
author = "the tilespec authors"
copyright = "the tilespec authors"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "README.md"]
html_theme = "alabaster"
html_theme_options = {"page_width": "1100px", "sidebar_width": "240px"}
html_title = "tilespec"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}

GEN = os.path.join(HERE, "_gen")
CHAPTER = re.compile(r"(?<![\w/`\[])(?<!\]\()spec/([a-z_]+)\.md(?![\w\]])")
CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)


def link_chapters(text: str, prefix: str) -> str:
    """Turn plain ``spec/NAME.md`` references (outside code) into Markdown links to the
    chapter pages; ``prefix`` is the path from the page to the chapters' folder."""
    parts = CODE.split(text)
    for k in range(0, len(parts), 2):  # the even parts are outside code
        parts[k] = CHAPTER.sub(lambda m: f"[spec/{m.group(1)}.md]({prefix}{m.group(1)}.md)"
                               if os.path.isfile(os.path.join(ROOT, "spec", m.group(0)[5:]))
                               else m.group(0), parts[k])
    return "".join(parts)


def generate(app=None):
    """Copy the spec and the README into docs/_gen, draw the pictures."""
    shutil.rmtree(GEN, ignore_errors=True)
    os.makedirs(os.path.join(GEN, "spec"))
    for name in sorted(os.listdir(os.path.join(ROOT, "spec"))):
        if name.endswith(".md"):
            with open(os.path.join(ROOT, "spec", name), encoding="utf-8") as f:
                text = f.read()
            with open(os.path.join(GEN, "spec", name), "w", encoding="utf-8") as f:
                f.write(link_chapters(text, ""))
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    readme = readme.replace("[`spec/`](spec/)", "[`spec/`](../spec.md)")
    with open(os.path.join(GEN, "readme.md"), "w", encoding="utf-8") as f:
        f.write(link_chapters(readme, "spec/"))
    draw_pictures(os.path.join(GEN, "pictures"))


def draw_pictures(folder):
    """The demo's pictures (tilespec.demo.pictures_demo), drawn from a fresh copy of the
    built-in dataset."""
    import io
    import tempfile

    from tilespec.demo import pictures_demo
    from tilespec.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        info = write_synthetic_dataset(tmp)
        paths = pictures_demo(info, io.StringIO())
        os.makedirs(folder, exist_ok=True)
        for name, path in paths.items():
            shutil.copyfile(path, os.path.join(folder, f"{name}.png"))


def setup(app):
    app.connect("builder-inited", generate)
