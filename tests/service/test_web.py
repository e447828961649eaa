"""The web page at /: served files, then a person's path through it in a real browser.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``; ``make test`` installs it) with
Playwright against a real uvicorn and a real Celery worker on the embedded SQLite broker, with a
tiny model (32 px, width 4) published in the store: colorize a photograph, read an error, train.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from common.settings import Settings
from models.config import TrainConfig
from models.presets import DEFAULT_PRESET, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, PRESETS
from service.app import create_app
from service.routers.web import IMMUTABLE, STATIC_DIR
from tests.photos import make_photo, write_dataset
from tests.procs import Proc, colorizer, colorizer_env, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
STATIC_FILES = ("index.html", "app.js", "style.css")
TINY_JOB_FIELDS = {  # the form's field ids and the tiny job of tests/system/test_e2e.py
    "#job-width": "4",
    "#job-batch-size": "2",
    "#job-sample-every": "3",
    "#job-publish-every": "3",
    "#job-checkpoint-every": "2",
    "#job-seed": "3",
}


# -- the served files (no browser, no server process) --------------------------------------------


@pytest.fixture
def client(tmp_path) -> Iterator[TestClient]:
    # No `with`: the lifespan (and with it TensorFlow) is not needed to serve the page.
    yield TestClient(create_app(Settings(data_dir=tmp_path / "data")))


class _FormReader(HTMLParser):
    """The options of each <select> and the placeholder of each <input>, by id."""

    def __init__(self) -> None:
        super().__init__()
        self.options: dict[str, list[str]] = {}
        self.placeholders: dict[str, str] = {}
        self.selected: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "select":
            self._select = attributes.get("id")
            self.options[self._select or ""] = []
        elif tag == "option" and self._select is not None:
            self.options[self._select].append(attributes.get("value") or "")
            if "selected" in attributes:
                self.selected[self._select] = attributes.get("value") or ""
        elif tag == "input" and "placeholder" in attributes:
            self.placeholders[attributes.get("id") or ""] = attributes["placeholder"] or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_page_and_its_files_answer_with_their_content_types_and_cache_headers(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    references = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert sorted(ref.split("?")[0] for ref in references) == ["static/app.js", "static/style.css"]
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    for reference in references:
        # The page names each file with its content hash: that URL may be cached for good.
        assert re.search(r"\?v=[0-9a-f]{12}$", reference), reference
        response = client.get(f"/{reference}")
        assert response.status_code == 200, response.text
        name = reference.split("?")[0].removeprefix("static/")
        assert response.headers["content-type"].split(";")[0] == types[name]
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.content == (STATIC_DIR / name).read_bytes()
        # Without the current hash the browser must revalidate, and gets a 304 when nothing changed.
        plain = client.get(f"/static/{name}", params={"v": "0" * 12})
        assert plain.headers["cache-control"] == "no-cache"
        again = client.get(f"/static/{name}", headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/", "/static/%2e%2e/app.py", "/static/..%2fapp.py"]
)
def test_a_path_outside_the_static_files_answers_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["detail"]


@pytest.mark.parametrize("name", STATIC_FILES)
def test_the_page_loads_nothing_from_another_server(client, name):
    text = client.get("/" if name == "index.html" else f"/static/{name}").text
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE), name
    assert "@import" not in text and "url(" not in text


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_documentation_loads_nothing_from_another_server(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", page.text, re.IGNORECASE)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:  # Swagger UI's and ReDoc's files come from the installed package
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert client.get(asset).status_code == 200, asset


def test_the_job_form_offers_every_preset_and_size_and_shows_the_training_defaults(client):
    form = _FormReader()
    form.feed(client.get("/").text)
    assert sorted(form.options["job-preset"]) == sorted(PRESETS)
    assert form.selected["job-preset"] == DEFAULT_PRESET
    sizes = [int(size) for size in form.options["job-image-size"]]
    assert sizes == [2**n for n in range(MIN_IMAGE_SIZE.bit_length() - 1, MAX_IMAGE_SIZE.bit_length())]
    defaults = TrainConfig.model_fields
    for field in ("width", "batch_size", "sample_every", "publish_every", "checkpoint_every"):
        assert form.placeholders[f"job-{field.replace('_', '-')}"] == str(defaults[field].default), field
    assert form.selected["job-image-size"] == str(defaults["image_size"].default)
    assert form.options["format"] == ["png", "jpeg", "webp"]


# -- in the browser, against real processes ------------------------------------------------------


def lively_generator():
    """A tiny lab generator (32 px, width 4) with He-scaled random kernels, so its colours are strong."""
    import keras

    from models.networks import build_generator

    keras.utils.set_random_seed(0)
    generator = build_generator(32, 1, 2, width=4)
    rng = np.random.default_rng(0)
    weights = []
    for w in generator.get_weights():
        if w.ndim == 4:  # conv kernels: an untrained generator's tiny outputs would be nearly gray
            w = rng.normal(0.0, np.sqrt(2.0 / (w.shape[0] * w.shape[1] * w.shape[2])), w.shape)
        weights.append(w.astype(np.float32))
    generator.set_weights(weights)
    return generator


@dataclass
class Server:
    url: str
    client: httpx.Client
    procs: tuple[Proc, ...]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The API and a worker (embedded broker) on a data directory with dataset "tiny" and version 1."""
    from models.store import ModelStore

    root = tmp_path_factory.mktemp("web")
    data_dir = root / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    version = ModelStore(data_dir / "models").publish(lively_generator(), {"preset": "lab", "image_size": 32})
    assert version == 1
    env = colorizer_env(data_dir)
    port = free_port()
    worker = Proc(colorizer("worker"), env, root / "worker.log")
    api = Proc(colorizer("serve", "--port", str(port)), env, root / "api.log")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    procs = (api, worker)
    try:
        wait_for(
            lambda: (r := client.get("/readyz")).status_code == 200 and r.json()["model_version"] == 1,
            90,
            "version 1 served",
            procs,
        )
        yield Server(url, client, procs)
    finally:
        client.close()
        api.stop()
        worker.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (root here, hence --no-sandbox)."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser tab; fails the test on any uncaught JavaScript error."""
    context = browser.new_context(accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert script_errors == []


def gray_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_photo(width, height, seed=11)).convert("L").save(buffer, "PNG")
    return buffer.getvalue()


def colour_spread(image: Image.Image) -> float:
    """Mean over pixels of (largest - smallest channel): 0 for a gray picture."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return float((rgb.max(-1) - rgb.min(-1)).mean())


@pytest.mark.integration
def test_the_api_documentation_renders_offline(page, server):
    elsewhere: list[str] = []

    def offline(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:  # as on a machine without internet
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock-summary-path", has_text="/colorize").first).to_be_visible()
    expect(page.locator(".opblock")).not_to_have_count(0)
    assert elsewhere == []


@pytest.mark.integration
def test_a_chosen_gray_photo_comes_back_coloured_at_its_size_beside_the_original(page, server):
    page.goto(f"{server.url}/")
    expect(page.locator("#server-status")).to_have_text(re.compile("Serving version 1"))
    # The file picker is reachable with the keyboard alone.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file":
            break
    assert page.evaluate("document.activeElement.id") == "file"
    page.select_option("#model", "1")
    page.select_option("#format", "png")
    photo = {"name": "old photo.png", "mimeType": "image/png", "buffer": gray_png(90, 60)}
    page.set_input_files("#file", files=[photo])

    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    expect(page.locator("#used-version")).to_have_text("version 1")
    assert page.eval_on_selector("#colorized", "img => [img.naturalWidth, img.naturalHeight]") == [90, 60]
    assert page.eval_on_selector("#original", "img => [img.naturalWidth, img.naturalHeight]") == [90, 60]
    # What the page shows is coloured (read back through a canvas) ...
    shown_spread = page.eval_on_selector(
        "#colorized",
        """img => {
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext("2d");
            context.drawImage(img, 0, 0);
            const d = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let sum = 0;
            for (let i = 0; i < d.length; i += 4) {
                sum += Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]);
            }
            return sum / (d.length / 4);
        }""",
    )
    assert shown_spread > 8
    # ... and so is the download, a PNG of the input's size named after the photo and the version.
    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == "old_photo-colorized-v1.png"
    result = Image.open(download.path())
    assert result.format == "PNG" and result.size == (90, 60)
    assert colour_spread(Image.open(io.BytesIO(gray_png(90, 60)))) == 0
    assert colour_spread(result) > 8

    # The before/after slider works from the keyboard: End shows all colour, Home all original.
    slider = page.locator("#slider")
    assert page.locator("label[for=slider]").text_content()
    slider.focus()
    page.keyboard.press("End")
    assert slider.input_value() == "100"
    assert page.eval_on_selector("#colorized", "img => img.style.clipPath") == "inset(0px 0% 0px 0px)"
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "1"
    assert page.eval_on_selector("#colorized", "img => img.style.clipPath") == "inset(0px 99% 0px 0px)"
    assert slider.get_attribute("aria-valuetext") == "1% colorized, 99% original"

    # ... and by dragging across the picture with the mouse, from 20% to 80% of its width (the
    # browser must not start a native image drag, which cancels the pointer: issue 14).
    box = page.locator("#compare").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.2 * box["width"], y)
    page.mouse.down()
    assert abs(int(slider.input_value()) - 20) <= 1
    page.mouse.move(box["x"] + 0.8 * box["width"], y, steps=12)
    page.mouse.up()
    assert abs(int(slider.input_value()) - 80) <= 1
    left = page.eval_on_selector("#divider", "d => parseFloat(d.style.left)")
    assert abs(left - 80) <= 1


@pytest.mark.integration
def test_a_file_that_is_not_an_image_shows_the_apis_reason(page, server):
    not_a_photo = b"shopping list: milk, eggs\n"
    expected = server.client.post(
        "/colorize", files={"image": ("notes.txt", not_a_photo, "text/plain")}, params={"format": "png"}
    )
    assert expected.status_code in (400, 415), expected.text
    page.goto(f"{server.url}/")
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": not_a_photo}]
    )
    error = page.locator("#colorize-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(f"Could not colorize notes.txt: {expected.json()['detail']}")
    assert error.get_attribute("role") == "alert"
    expect(page.locator("#result")).to_be_hidden()


def start_job_from_form(page, server: Server, steps: int, **fields: str):
    """Fill and submit the job form on the training view; returns the new job's card."""
    page.goto(f"{server.url}/#training")
    # The server lists its datasets (GET /datasets), so the field is a menu of them.
    expect(page.locator("#job-dataset option[value='tiny']")).to_have_text("tiny · 6 images")
    page.select_option("#job-dataset", "tiny")
    page.select_option("#job-preset", "lab")
    page.select_option("#job-image-size", "32")
    page.fill("#job-steps", str(steps))
    page.click("details.more summary")
    for selector, value in {**TINY_JOB_FIELDS, **fields}.items():
        page.fill(selector, value)
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as submitted:
        page.click("#job-submit")
    assert submitted.value.post_data_json["dataset"] == "tiny"
    status = page.locator("#job-status")
    expect(status).to_have_text(re.compile(r"^Job [0-9a-f]{8} is queued\.$"))
    short_id = status.text_content().split()[1]
    card = page.locator(".job", has=page.locator(".job-title", has_text=f"Job {short_id}"))
    expect(card).to_have_count(1)
    return card


@pytest.mark.integration
def test_a_job_started_from_the_form_finishes_and_its_versions_appear_with_metrics(page, server):
    card = start_job_from_form(page, server, steps=6)
    expect(card.locator(".job-state")).to_have_text("succeeded", timeout=150_000)
    expect(card.locator(".job-progress-text")).to_have_text("Step 6 / 6 (100%)")
    assert card.locator(".job-progress").evaluate("p => [p.value, p.max]") == [6, 6]
    expect(card.locator(".job-losses")).to_have_text(re.compile(r"\bg [-\d.e]+ · .*\bl1 [-\d.e]+"))
    job = server.client.get(f"/jobs/{card.locator('.job-title').get_attribute('title')}").json()
    assert len(job["published_versions"]) == 2  # at steps 3 and 6
    newest = str(job["published_versions"][-1])
    expect(card.locator(".job-published")).to_have_text(", ".join(f"v{v}" for v in job["published_versions"]))
    expect(card.locator(".job-eta")).to_have_text(re.compile(r"^done, took \d+"))
    sample = card.locator(".job-sample-img")
    expect(sample).to_be_visible()
    assert sample.evaluate("img => img.naturalWidth") > 0

    row = page.locator(f"#versions tbody tr[data-version='{newest}']")
    expect(row).to_be_visible()
    listed = {str(info["version"]): info for info in server.client.get("/models").json()["versions"]}
    validation = (listed[newest].get("metrics") or {}).get("validation") or {}
    cells = row.locator("td").all_text_contents()
    assert cells[:2] == ["lab", "32 px"]
    assert cells[4] == (f"{validation['ciede2000']:.2f}" if "ciede2000" in validation else "–")
    assert cells[5] == (f"{validation['psnr']:.2f}" if "psnr" in validation else "–")
    # The new versions are offered for colorizing and as a starting point.
    assert page.locator(f"#model option[value='{newest}']").count() == 1
    assert page.locator(f"#job-init-from option[value='{newest}']").count() == 1


@pytest.mark.integration
def test_a_running_jobs_progress_moves_on_the_page_and_its_cancel_button_stops_it(page, server):
    card = start_job_from_form(page, server, steps=100_000, **{"#job-publish-every": "100000"})
    progress = card.locator(".job-progress")
    expect(card.locator(".job-state")).to_have_text("running", timeout=120_000)
    first = wait_for(lambda: int(progress.get_attribute("data-step") or 0), 60, "a first step shown")
    later = wait_for(
        lambda: (step := int(progress.get_attribute("data-step") or 0)) > first and step, 60, "a later step"
    )
    assert later > first
    expect(card.locator(".job-progress-text")).to_have_text(re.compile(r"^Step \d+ / 100000 \("))
    expect(card.locator(".job-eta")).to_have_text(re.compile(r"^about \d+"))
    cancel = card.get_by_role("button", name=re.compile("Cancel job"))
    cancel.focus()
    page.keyboard.press("Enter")
    expect(card.locator(".job-state")).to_have_text("cancelled", timeout=60_000)
    expect(cancel).to_be_hidden()
    expect(card.locator(".job-eta")).to_have_text(re.compile(r"^cancelled after \d+"))
    assert int(progress.get_attribute("data-step")) < 100_000


@pytest.mark.integration
def test_the_api_key_is_sent_with_job_requests_and_a_refusal_is_explained(page, server):
    refusal = "the API key is wrong: check X-API-Key against COLORIZER_API_KEY"
    # This server has no key; a refusing one is stood in for by answering /jobs here, as it would.
    answer = {"status": 401, "json": {"detail": refusal}, "headers": {"WWW-Authenticate": "Bearer"}}
    page.route(re.compile(r".*/jobs$"), lambda route: route.fulfill(**answer))
    page.goto(f"{server.url}/#training")
    jobs_error = page.locator("#jobs-error")
    expect(jobs_error).to_have_text(
        f"Could not list the training jobs: {refusal}. Enter the API key at the top of the page."
    )
    with page.expect_request(lambda r: r.url.endswith("/jobs")) as listed:
        page.fill("#api-key", "s3cret")
        page.keyboard.press("Enter")
    assert listed.value.headers["x-api-key"] == "s3cret"
    page.reload()  # kept for the tab's session
    assert page.input_value("#api-key") == "s3cret"


@pytest.mark.integration
def test_a_dataset_uploaded_from_the_page_is_offered_for_training(page, server, tmp_path):
    folder = write_dataset(tmp_path / "flowers", count=4)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for photo in sorted(folder.iterdir()):
            zipped.write(photo, f"flowers/{photo.name}")
    page.goto(f"{server.url}/#training")
    page.fill("#dataset-name", "flowers")
    page.set_input_files(
        "#dataset-archive",
        files=[{"name": "flowers.zip", "mimeType": "application/zip", "buffer": archive.getvalue()}],
    )
    page.click("#dataset-form button[type=submit]")
    expect(page.locator("#dataset-status")).to_have_text("Dataset flowers uploaded: 4 images.")
    assert page.input_value("#job-dataset") == "flowers"
    expect(page.locator("#job-dataset option[value='flowers']")).to_have_text("flowers · 4 images")
    # The same name again: the API's reason, readable.
    page.fill("#dataset-name", "flowers")
    page.set_input_files(
        "#dataset-archive",
        files=[{"name": "flowers.zip", "mimeType": "application/zip", "buffer": archive.getvalue()}],
    )
    page.click("#dataset-form button[type=submit]")
    error = page.locator("#dataset-error")
    expect(error).to_have_text(re.compile(r"^Could not upload the dataset: .*flowers"))
