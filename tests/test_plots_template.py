"""The offline template of `dvc plots show`: pinned libraries, and DVC's own page as the
fallback where npm cannot fetch them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from dvc_render import render_html
from dvc_render.vega import VegaRenderer

from tools import plots_template
from tools.plots_template import LIBRARIES, FetchError, bundle_from, write_template


def test_a_tarball_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    vega = LIBRARIES[0]
    code = b"var vega = 'not the release';"
    tarball = tmp_path / f"{vega.name}-{vega.version}.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        member = tarfile.TarInfo(f"package/{vega.bundle}")
        member.size = len(code)
        archive.addfile(member, io.BytesIO(code))
    with pytest.raises(FetchError, match="does not match the pinned digest of vega@5.20.2"):
        bundle_from(tarball, vega)


def test_without_npm_the_template_is_dvcs_own_page_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm on it
    template = tmp_path / "offline.html"
    assert write_template(template) is False
    assert "npm is not installed" in capsys.readouterr().err
    page = tmp_path / "index.html"
    curve = VegaRenderer([{"epoch": 1, "loss": 2.3}], "loss.csv", x="epoch", y="loss")
    render_html(renderers=[curve], output_file=page, html_template=template)
    # DVC filled the placeholder with its CDN scripts: the page renders online.
    assert '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2">' in page.read_text()


def test_the_pins_are_the_libraries_dvc_loads_online() -> None:
    for library in LIBRARIES:
        assert f'https://cdn.jsdelivr.net/npm/{library.spec}"' in VegaRenderer.SCRIPTS
    assert plots_template.STAMP.count("@") == 3
