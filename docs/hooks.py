"""MkDocs hook: serve the repository's own Markdown (RESULTS.md, SECURITY.md, BENCHMARKS.md, CHANGELOG.md,
the experiments' tables under results/) as pages of the site, at the same relative paths, so that their
links work on the site as they do in the repository. Nothing is copied into docs/.

The root files show pictures from ``docs/assets/`` (committed, redrawn by ``make figures``); on the site
that folder is ``assets/``. The experiments' tables under results/ name PNGs their commands write and the
repository does not keep: on the site such a picture becomes a sentence saying which command draws it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
ROOT_PAGES = ("RESULTS.md", "SECURITY.md", "BENCHMARKS.md", "CHANGELOG.md")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def on_files(files, config):
    pages = [ROOT / name for name in ROOT_PAGES if (ROOT / name).exists()]
    pages += sorted((ROOT / "results").rglob("*.md"))
    for path in pages:
        uri = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if uri in ROOT_PAGES:
        return markdown.replace("](docs/", "](")
    if uri.startswith("results/"):
        here = Path(uri).parent

        def _missing_picture(match: re.Match) -> str:  # a PNG on disk but not in the site is missing there too
            if files.get_file_from_path((here / match.group(2)).as_posix()) is not None:
                return match.group(0)
            return f"*(picture `{match.group(2)}`: written beside this table by the command that made it)*"

        return _IMAGE.sub(_missing_picture, markdown)
    return markdown
