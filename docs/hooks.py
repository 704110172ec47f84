"""mkdocs hook (mkdocs.yml `hooks:`): the pictures the benches write to bench/results/ join the site.

A page shows one as `![...](../bench/results/NAME.png)`, a path that also resolves when the markdown is read in the
repository. mkdocs only knows files under docs/, so each picture is added as a file of that path, written to
site/bench/results/NAME.png, and the link checker finds it like any other page's target.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel


def on_files(files, config):
    results = Path(config["config_file_path"]).parent / "bench" / "results"
    for picture in sorted(results.glob("*.png")):
        file = File(f"../bench/results/{picture.name}", config["docs_dir"], config["site_dir"],
                    config["use_directory_urls"], dest_uri=f"bench/results/{picture.name}")
        file.inclusion = InclusionLevel.INCLUDED  # mkdocs would exclude it: '..' looks like a hidden folder
        files.append(file)
    return files
