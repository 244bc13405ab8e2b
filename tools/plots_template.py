"""Write the HTML template that makes `dvc plots show` and `dvc plots diff` render offline.

    python -m tools.plots_template        # run by `./tasks.sh setup`

DVC's page loads vega, vega-lite and vega-embed from a CDN, so it stays blank without
internet. DVC takes a template without the `{scripts}` placeholder (`plots.html_template`);
set-up names this one in `.dvc/config.local`, DVC's machine-local config, which git ignores:
a clone installed another way (`uv sync`, `pip install -e .`) has neither the file nor the
setting, and `dvc plots show` uses DVC's own page. This template carries the three libraries
inline, at the versions DVC's own page loads (dvc-render's VegaRenderer.SCRIPTS), fetched
from the npm registry with `npm pack` (so a user's npm registry and proxy settings apply)
and checked against the registry's sha512 digests pinned below.

Without npm or the registry, the template falls back to DVC's own page (the CDN) and says
so: plots then render only online, until set-up runs again with the registry reachable.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".cache" / "plots" / "offline.html"  # .dvc/config.local names it


class Library(NamedTuple):
    name: str
    version: str
    bundle: str  # the file in the package that the CDN serves
    integrity: str  # the npm registry's dist.integrity of the package's tarball

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


LIBRARIES = (
    Library(
        "vega",
        "5.20.2",
        "build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    Library(
        "vega-lite",
        "5.2.0",
        "build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    Library(
        "vega-embed",
        "6.18.2",
        "build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)

# The template's second line names the pins, so set-up fetches only when they change.
STAMP = "<!-- offline plots: " + " ".join(library.spec for library in LIBRARIES) + " -->"
FALLBACK_STAMP = "<!-- plots from the CDN: the npm registry was unreachable -->"

PAGE = """<!DOCTYPE html>
{stamp}
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class FetchError(Exception):
    """A library could not be fetched or did not match its pinned digest."""


def integrity_of(data: bytes) -> str:
    """A tarball's digest as npm writes it (Subresource Integrity, sha512)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def bundle_from(tarball: Path, library: Library) -> str:
    """The library's browser bundle, after checking the tarball against its pin."""
    data = tarball.read_bytes()
    if integrity_of(data) != library.integrity:
        raise FetchError(f"{tarball.name} does not match the pinned digest of {library.spec}")
    with tarfile.open(tarball) as archive:
        member = archive.extractfile(f"package/{library.bundle}")
        if member is None:
            raise FetchError(f"{library.spec} has no {library.bundle}")
        return member.read().decode()


def fetch_bundles() -> list[str]:
    """The three bundles, from the npm registry through `npm pack`."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            subprocess.run(
                ["npm", "pack", "--silent", "--pack-destination", folder]
                + [library.spec for library in LIBRARIES],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except FileNotFoundError as error:
            raise FetchError("npm is not installed") from error
        except subprocess.CalledProcessError as error:
            raise FetchError(f"npm pack failed: {error.stderr.strip()[-300:]}") from error
        except subprocess.TimeoutExpired as error:
            raise FetchError("npm pack did not finish in 300 s") from error
        return [
            bundle_from(Path(folder) / f"{library.name}-{library.version}.tgz", library)
            for library in LIBRARIES
        ]


def inline_script(code: str) -> str:
    # A literal "</script" inside the code would end the element early.
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def offline_page(bundles: list[str]) -> str:
    """DVC's page with the libraries inline and no `{scripts}` placeholder."""
    return PAGE.format(stamp=STAMP, scripts="\n".join(inline_script(code) for code in bundles))


def online_page() -> str:
    """DVC's own page: DVC fills `{scripts}` with its CDN links."""
    return PAGE.format(stamp=FALLBACK_STAMP, scripts="    {scripts}")


def write_template(target: Path = TEMPLATE) -> bool:
    """Write the offline template unless it is there for these pins; returns whether the
    plots render offline."""
    if target.is_file() and target.read_text().splitlines()[1:2] == [STAMP]:
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        page = offline_page(fetch_bundles())
    except FetchError as error:
        target.write_text(online_page())
        print(
            f"warning: {error}; `dvc plots show` will load vega from the CDN (online only). "
            "Run ./tasks.sh setup again with the npm registry reachable to render offline.",
            file=sys.stderr,
        )
        return False
    target.write_text(page)
    return True


def use_template(repo: Path = ROOT, template: Path = TEMPLATE) -> None:
    """Name the template as `plots.html_template` in the repository's `.dvc/config.local`,
    with DVC's own `dvc config --local` (a path relative to .dvc/, as DVC resolves it)."""
    relative = Path("..") / template.relative_to(ROOT)
    subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", str(relative)],
        cwd=repo,
        check=True,
        capture_output=True,
    )


if __name__ == "__main__":
    write_template()
    use_template()
