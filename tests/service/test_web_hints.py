"""Colour hints on the web page, in a real browser (Debian's Chromium driven by Playwright) against
a real uvicorn serving a tiny model that takes hints: click to drop hints, pick their colours, see
the colours change where they are; move one with the keyboard, delete it, clear them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from models.store import ModelStore
from tests.apptest import publish_tiny_hints_to
from tests.procs import Proc, colorizer, colorizer_env, free_port, wait_for

# browser and page are test_web's fixtures; page takes this module's server
from tests.service.test_web import Server, browser, gray_png, page  # noqa: F401

# The mean colour of the shown result in a box around (x, y), read back through a canvas.
MEAN_AROUND = """([x, y]) => {
    const img = document.querySelector("#colorized");
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const d = context.getImageData(x - 3, y - 3, 7, 7).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
    return sum.map((v) => v / (d.length / 4));
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The API alone, serving version 1: a tiny model whose hints change the colours near them."""
    root = tmp_path_factory.mktemp("web-hints")
    data_dir = root / "data"
    assert publish_tiny_hints_to(ModelStore(data_dir / "models")) == 1
    port = free_port()
    api = Proc(colorizer("serve", "--port", str(port)), colorizer_env(data_dir), root / "api.log")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        wait_for(lambda: client.get("/readyz").status_code == 200, 90, "version 1 served", (api,))
        yield Server(url, client, (api,))
    finally:
        client.close()
        api.stop()


def _click_at(tab, x: int, y: int, size: tuple[int, int]) -> None:
    """Click the hint board at pixel (x, y) of the photograph of ``size``, whatever its shown size."""
    tab.locator("#hint-image").scroll_into_view_if_needed()
    box = tab.locator("#hint-image").bounding_box()
    tab.mouse.click(
        box["x"] + (x + 0.5) * box["width"] / size[0], box["y"] + (y + 0.5) * box["height"] / size[1]
    )


def _colorized_again(tab, action) -> None:
    with tab.expect_response(lambda r: "/colorize" in r.url and r.request.method == "POST") as answered:
        action()
    assert answered.value.status == 200
    expect(tab.locator("#colorize-status")).to_have_text(re.compile("^Colorized"))


@pytest.mark.integration
def test_two_hints_placed_on_the_page_change_the_colour_where_they_are(page, server):  # noqa: F811
    size = (96, 64)
    page.goto(f"{server.url}/")
    expect(page.locator("#server-status")).to_have_text(re.compile("Serving version 1"))
    page.set_input_files(
        "#file", files=[{"name": "family.png", "mimeType": "image/png", "buffer": gray_png(*size)}]
    )
    expect(page.locator("#hints-panel")).to_be_visible(timeout=60_000)
    expect(page.locator("#hints-status")).to_have_text("No hints: the model’s own colours.")
    before = {p: page.evaluate(MEAN_AROUND, list(p)) for p in [(15, 15), (75, 45), (80, 10)]}

    # Two hints by mouse, each given a colour; the result comes back after each change.
    for point, colour in [((15, 15), "#e01010"), ((75, 45), "#1030e0")]:
        _colorized_again(page, lambda p=point: _click_at(page, *p, size))
        _colorized_again(page, lambda c=colour: page.locator("#hint-color").fill(c))
    expect(page.locator(".hint-marker")).to_have_count(2)
    expect(page.locator("#hints-status")).to_have_text("2 hints; hint 2 selected.")
    red, blue = page.evaluate(MEAN_AROUND, [15, 15]), page.evaluate(MEAN_AROUND, [75, 45])
    old_red, old_blue = before[(15, 15)], before[(75, 45)]
    assert red[0] - red[2] > old_red[0] - old_red[2] + 10, (red, old_red)  # redder where the red hint is
    assert blue[2] - blue[0] > old_blue[2] - old_blue[0] + 10, (blue, old_blue)  # bluer at the blue one
    assert page.evaluate(MEAN_AROUND, [80, 10]) == pytest.approx(before[(80, 10)], abs=1.0)  # far from both
    assert re.fullmatch(r"family-colorized-v1-2hints\.png", page.get_attribute("#download", "download"))
    assert page.get_attribute("#hints-download", "download") == "family-hints.json"

    # The keyboard: the selected (blue) hint moves right, then goes; the red one stays.
    marker = page.locator('.hint-marker[data-index="1"]')
    _colorized_again(page, lambda: marker.press("ArrowLeft"))
    expect(marker).to_have_attribute("aria-label", re.compile(r"^Hint 2: #1030e0 at 74, 45$"))
    _colorized_again(page, lambda: marker.press("Delete"))
    expect(page.locator(".hint-marker")).to_have_count(1)
    blue_gone = page.evaluate(MEAN_AROUND, [75, 45])
    assert blue_gone == pytest.approx(old_blue, abs=1.0)
    with page.expect_download() as saved:
        page.click("#hints-download")
    points = json.loads(saved.value.path().read_text())
    assert [(p["x"], p["y"], p["color"]) for p in points] == [(15, 15, "#e01010")]

    # Clearing them gives the model's own colours back.
    _colorized_again(page, lambda: page.click("#hints-clear"))
    expect(page.locator(".hint-marker")).to_have_count(0)
    assert page.evaluate(MEAN_AROUND, [15, 15]) == pytest.approx(old_red, abs=1.0)
