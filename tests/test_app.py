"""`beit-depth app` as a person uses it: the real CLI in a child process, driven in headless Chromium (Playwright).

One server and one page for most of the module: upload a photo -> the depth image and the 3D view are drawn, and the
four downloads are byte for byte what predict writes; upload a short video in the Video tab -> a depth video comes
back. Offline: the page may only reach the app (every other request is aborted and counted) and the server process
runs behind `app_helpers.guard_network` (every lookup or connection off this machine refused and logged); both stay
empty.

Under load (`beit_flax.app.limits`, the defaults): the page states the limits; a new image runs the model once and
the files of the result it replaces go; an image over the pixel limit, an upload over the size limit and a video over
the frame limit are each refused with one message on the page, before the work (the server's peak memory does not
move for a 4000x4000 PNG); a closed page's files go. A second server (its own temp folders, loaded beside the first)
takes an image request while a long video runs, then SIGTERM during that video and an upload streaming in: exit 143,
one line, and nothing left in its temp folders.

The browser is found or installed by `browser_helpers.launch` ($BEIT_FLAX_CHROMIUM, Playwright's own, one on PATH,
else Playwright's download or the Chromium shipped in npm's @sparticuz/chromium); none at all fails the test, and so
does a missing Playwright. WebGL (the 3D view) runs on SwiftShader, Chromium's CPU renderer.
$BEIT_FLAX_SCREENSHOTS=DIR also saves DIR/app.png and DIR/app_3d.png;
$BEIT_FLAX_APP_WEIGHTS=FILE serves that model instead of the tiny random one (README screenshots).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import app_helpers
import browser_helpers
import numpy as np
import pytest
from app_helpers import (
    App,
    SlowUpload,
    colourful_fraction,
    drawn_fraction,
    files_under,
    pattern_clip,
    peak_memory,
    pixels,
    save_small_png,
)
from PIL import Image
from tiny_config import TINY

from beit_flax.app.limits import MAX_PIXELS, MAX_UPLOAD_MB, MAX_VIDEO_FRAMES, MIB
from beit_flax.transforms import megapixels

# WebGL on the CPU: headless Chromium has no GPU, and blocks SwiftShader's WebGL unless told it is wanted
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
SCREENSHOTS = os.environ.get("BEIT_FLAX_SCREENSHOTS")
TRAINED_WEIGHTS = os.environ.get("BEIT_FLAX_APP_WEIGHTS")
ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets" / "scene.jpg"
FRAMES = 8
WAIT_MS = 60_000  # a step of the page (upload -> result); generous for a loaded 2-core machine
SUFFIXES = (".npy", ".png", ".ply", ".glb")
# imageio's ffmpeg calls (the clip, frame counts) fork after JAX is imported here: fork + exec, no Python in the child
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


# --- inputs ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def weights(folder: Path) -> str:
    if TRAINED_WEIGHTS:
        return TRAINED_WEIGHTS
    from beit_flax import save
    from beit_flax.params import init_params

    # random, but every leaf perturbed: a depth map with structure, not a constant
    save(folder / "tiny.msgpack", TINY, init_params(TINY, seed=0, spread=0.1))
    return str(folder / "tiny.msgpack")


@pytest.fixture(scope="module")
def photo(folder: Path) -> Path:
    """The scene asset as a phone would save it: a JPEG with a 35 mm-equivalent focal length in its EXIF (26 mm),
    which the 3D files must use. Small (256 x 192) for the tiny model, full size for README screenshots."""
    image = Image.open(ASSET)
    if not TRAINED_WEIGHTS:
        image = image.resize((256, 192), Image.LANCZOS)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # Exif IFD: FocalLengthIn35mmFilm
    image.save(folder / "scene.jpg", quality=92, exif=exif)
    return folder / "scene.jpg"


@pytest.fixture(scope="module")
def clip(folder: Path) -> Path:
    """8 frames, 128 x 96, of the scene panning right."""
    import imageio.v2 as imageio

    scene = np.asarray(Image.open(ASSET).resize((160, 96), Image.LANCZOS))
    with imageio.get_writer(folder / "pan.mp4", fps=8, codec="libx264", macro_block_size=1, quality=8) as writer:
        for i in range(FRAMES):
            writer.append_data(np.ascontiguousarray(scene[:, 4 * i : 4 * i + 128]))
    return folder / "pan.mp4"


@pytest.fixture(scope="module")
def env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        app_helpers.NET_LOG_ENV: str(folder / "net.log"),
        "BEIT_FLAX_CACHE_DIR": "off",  # no writes to ~/.cache
        "GRADIO_TEMP_DIR": str(folder / "gradio"),  # uploads and served copies: removed with the test's folder
    }


@pytest.fixture(scope="module")
def long_clip(folder: Path) -> Path:
    """Within the frame limit, and long enough to outlast an image request and a SIGTERM (~35 s here)."""
    return pattern_clip(folder / "long.mp4", MAX_VIDEO_FRAMES - 50, "480x360", 30)


# --- processes ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second(folder: Path, weights: str, env: dict[str, str]):
    """A second server with every temp folder its own (TMPDIR, GRADIO_TEMP_DIR), spawned here so that it loads
    beside the first; `.wait()` before use."""
    temp = folder / "second"
    temp.mkdir()
    server = App(["--weights", weights], {**env, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(temp)}, wait=False)
    server.temp = temp
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predicted(folder: Path, photo: Path, weights: str, env: dict[str, str]):
    """predict's files for the photo, {suffix: bytes}; started before the app, so that the two load in parallel."""
    out = folder / "predicted"
    command = [sys.executable, "-m", "beit_flax.cli", "predict", str(photo), "--weights", weights, "--out", str(out)]
    command += ["--ply", "--glb", "-q"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def files() -> dict[str, bytes]:
        log, _ = job.communicate(timeout=300)
        assert job.returncode == 0, log
        return {suffix: (out / f"{photo.stem}{suffix}").read_bytes() for suffix in SUFFIXES}

    yield files
    if job.poll() is None:
        job.kill()
        job.wait()


@pytest.fixture(scope="module")
def app(predicted, second, weights: str, env: dict[str, str]):
    server = App(["--weights", weights], env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('Playwright is missing: pip install -e ".[test]" (the test needs a real browser)')
    with sync_playwright() as playwright:
        browser = browser_helpers.launch(playwright, CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """The app's page, with every request that did not go to the app aborted and listed in `external`."""

    def __init__(self, browser, url: str) -> None:
        # service workers could fetch past the routes; downloads: the file links of the results
        self.context = browser.new_context(
            viewport={"width": 1200, "height": 900}, service_workers="block", accept_downloads=True
        )
        self.external: list[str] = []
        self.requests: list[str] = []
        self.context.route("**/*", self.route)
        self.page = self.context.new_page()
        self.page.on("websocket", lambda ws: self.check(ws.url))
        self.page.goto(url)

    def check(self, url: str) -> bool:
        self.requests.append(url)
        local = urlparse(url).hostname in ("127.0.0.1", "localhost")
        if not local:
            self.external.append(url)
        return local

    def route(self, route) -> None:
        route.continue_() if self.check(route.request.url) else route.abort()


@pytest.fixture(scope="module")
def page(browser, app: App):
    page = Page(browser, app.url)
    yield page
    page.context.close()


def server_folder(env: dict[str, str]) -> Path:
    """The one folder the app writes in (beit_flax.app.server: under $GRADIO_TEMP_DIR)."""
    (folder,) = Path(env["GRADIO_TEMP_DIR"]).glob("beit-depth-app-*")
    return folder


def joins(page: Page) -> int:
    """Requests the page has queued so far (one per model run asked for)."""
    return sum(urlparse(url).path.endswith("/queue/join") for url in page.requests)


def error_shown(ui, text: str) -> str:
    """The error message on the page (Gradio's toast) that contains `text`, once it shows."""
    toast = ui.locator("[data-testid=toast-text]").filter(has_text=text)
    toast.first.wait_for(timeout=WAIT_MS)
    return toast.first.inner_text()


def assert_offline(page: Page, app: App, env: dict[str, str]) -> None:
    assert page.external == [], f"the page reached beyond the app: {page.external}"
    log = Path(env[app_helpers.NET_LOG_ENV])
    assert not log.exists(), f"the server reached beyond this machine: {log.read_text()}"
    assert app.process.poll() is None, app.log()


def wait_drawn(locator, min_drawn: float, min_colourful: float, timeout_s: float = WAIT_MS / 1000) -> np.ndarray:
    """Screenshots of an element until it shows a picture: enough pixels off its background, enough coloured."""
    deadline = time.monotonic() + timeout_s
    while True:
        shot = pixels(locator.screenshot())
        drawn, colourful = drawn_fraction(shot), colourful_fraction(shot)
        if drawn >= min_drawn and colourful >= min_colourful:
            return shot
        if time.monotonic() > deadline:
            raise AssertionError(f"not drawn: {drawn:.1%} off the background, {colourful:.1%} coloured")
        time.sleep(0.5)


# --- the tests ------------------------------------------------------------------------------------------------------


def test_guard_blocks_the_internet(tmp_path: Path, monkeypatch) -> None:
    """The server-side check means something: the guard refuses and logs a lookup and a connection off the machine,
    and lets loopback through."""
    import socket

    for owner, name in ((socket, "getaddrinfo"), (socket.socket, "connect"), (socket.socket, "connect_ex")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    app_helpers.guard_network(tmp_path / "net.log")
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("pypi.org", 443)
    with socket.socket() as outside, pytest.raises(OSError):
        outside.connect(("192.0.2.1", 80))  # TEST-NET-1: unroutable anyway, never reached
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
    assert (tmp_path / "net.log").read_text().splitlines() == ["lookup 'pypi.org'", "connect ('192.0.2.1', 80)"]


def test_missing_gradio(monkeypatch, capsys, tmp_path: Path) -> None:
    from beit_flax.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    for name in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)  # the app sets them; restored after the test
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    assert main(["app", "--weights", "nonexistent.msgpack"]) == 2
    assert capsys.readouterr().err == 'beit-depth: error: the app needs gradio: pip install "beit-flax[app]"\n'
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path) and list(tmp_path.iterdir()) == []  # its folder: gone


def test_results_keep_what_each_page_shows_within_the_byte_bound(tmp_path: Path) -> None:
    """`Results` (no server): a replaced result goes at once; an upload two pages share goes when neither holds it
    (its hash folder too); past the bound the least recently kept go first; a closed page's all go; nothing outside
    the root is ever removed."""
    from beit_flax.app.results import Results

    results = Results(tmp_path, max_bytes=250)

    def result(size: int = 100) -> Path:
        folder = results.folder("image")
        (folder / "scene.npy").write_bytes(bytes(size))
        return folder

    (tmp_path / "hash").mkdir()
    shared = tmp_path / "hash" / "scene.jpg"
    shared.write_bytes(bytes(10))
    first, second = result(), result()
    results.keep("a", "image-in", [shared])
    results.keep("b", "image-in", [shared])
    results.keep("a", "image-out", [first])
    results.keep("a", "image-out", [second])
    assert not first.exists() and second.exists()
    results.keep("a", "image-in", [])  # page b still shows it
    assert shared.exists()
    theirs = result()
    results.keep("b", "image-out", [theirs])
    assert results.bytes_kept() == 210
    newest = result()
    results.keep("c", "image-out", [newest])  # 310 bytes: b's upload (the oldest), then a's result go
    assert not shared.exists() and not (tmp_path / "hash").exists() and not second.exists()
    assert theirs.exists() and newest.exists() and results.bytes_kept() == 200
    results.end("b")
    assert not theirs.exists() and newest.exists()
    outside = tmp_path.parent / f"{tmp_path.name}-visitor.txt"
    outside.write_text("not the server's")
    results.keep("d", "image-in", [outside])
    results.keep("d", "image-in", [])
    assert outside.exists()
    outside.unlink()


def test_limits_are_stated(page: Page) -> None:
    """The page and the README's web demo section state the limits the server applies."""
    limits = [f"uploads up to {MAX_UPLOAD_MB} MB", f"up to {megapixels(MAX_PIXELS)}", f"{MAX_VIDEO_FRAMES} frames"]
    about = page.page.locator("#about").inner_text()
    readme = (ROOT / "README.md").read_text().split("### The web demo")[1].split("\n## ")[0]
    for limit in limits:
        assert limit in about, about
        assert limit in readme, limit


def test_image(page: Page, app: App, photo: Path, predicted, env: dict[str, str]) -> None:
    ui = page.page
    ui.locator("#image-in input[type=file]").set_input_files(photo)
    depth = ui.locator("#depth-out img")
    depth.wait_for(timeout=WAIT_MS)
    ui.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=depth.element_handle(), timeout=WAIT_MS)
    assert depth.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(Image.open(photo).size)
    assert urlparse(depth.get_attribute("src")).path.endswith("/scene.png")  # the PNG itself, not a re-encoding
    shown = wait_drawn(depth, min_drawn=0.1, min_colourful=0.1)  # a colormapped picture, not one colour
    assert shown.std() > 5, "the depth image is uniform"

    view = ui.locator("#mesh-out canvas")
    view.wait_for(timeout=WAIT_MS)
    # a textured mesh drawn by WebGL: the photo's colours over part of a white background (blank: 1% drawn, all grey;
    # the tiny model's mesh: 5% drawn, 1% coloured, its random depth spreading it thin)
    wait_drawn(view, min_drawn=0.03, min_colourful=0.005)
    status = ui.locator("#image-status").inner_text()
    assert "EXIF 26 mm" in status, status  # the upload kept its EXIF: Gradio passed the file on unchanged

    links = ui.locator("#files-out a[download]")
    assert links.count() == len(SUFFIXES)
    downloaded = {}
    for i in range(links.count()):
        with ui.expect_download() as info:
            links.nth(i).click()
        name = info.value.suggested_filename
        downloaded[Path(name).suffix] = (name, Path(info.value.path()).read_bytes())
    assert [name for name, _ in downloaded.values()] == [f"scene{s}" for s in SUFFIXES]
    expected = predicted()
    for suffix in SUFFIXES:
        assert downloaded[suffix][1] == expected[suffix], f"{suffix} differs from predict's"
    assert pixels(expected[".png"]).std() > 5, "the depth map is uniform: the model proves nothing"

    if SCREENSHOTS:
        save_small_png(ui.screenshot(full_page=True), Path(SCREENSHOTS) / "app.png", width=1200)
        save_small_png(view.screenshot(), Path(SCREENSHOTS) / "app_3d.png")
    assert joins(page) == 1, "the upload ran the model more than once"
    assert_offline(page, app, env)


def test_a_new_image_runs_once_and_replaces_the_old_files(
    page: Page, app: App, photo: Path, folder: Path, env: dict[str, str]
) -> None:
    """Gradio fires `change` twice when an image replaces another (the model ran twice, the first result thrown
    away): one run now; and the replaced upload and its four files are gone from the server's folder."""
    ui = page.page
    mirror = folder / "mirror.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    before = joins(page)
    ui.locator("#image-in input[type=file]").set_input_files(mirror)
    ui.locator("#image-status").filter(has_text="mirror.png").wait_for(timeout=WAIT_MS)
    time.sleep(1)  # a second run would have been asked for by now
    assert joins(page) - before == 1
    left = files_under(server_folder(env))
    assert sorted(Path(name).name for name in left if Path(name).stem == "mirror") == sorted(
        ["mirror.png", *(f"mirror{suffix}" for suffix in SUFFIXES)]
    ), left
    assert not [name for name in left if Path(name).stem == "scene"], left  # the upload and its four results
    assert_offline(page, app, env)


def test_an_image_over_the_pixel_limit(page: Page, app: App, folder: Path, env: dict[str, str]) -> None:
    """A 56 KB one-colour 4000x4000 PNG (16 MP) is refused from its header, before anything is decoded: one message,
    no result files, and the server's peak memory unchanged (it rose by 1.6 GB, with 730 MB of files, before)."""
    big = folder / "big.png"
    Image.new("RGB", (4000, 4000), (90, 120, 200)).save(big, optimize=True)
    peak = peak_memory(app.process.pid)
    page.page.locator("#image-in input[type=file]").set_input_files(big)
    message = error_shown(page.page, "big.png")
    limit = megapixels(MAX_PIXELS)
    assert message == f"big.png: 4000x4000 = 16 MP is over the limit of {limit} (raise it with --max-pixels)"
    growth = peak_memory(app.process.pid) - peak
    assert growth < 64 * MIB, f"peak memory rose by {growth / MIB:.0f} MB"
    assert [Path(name).name for name in files_under(server_folder(env)) if Path(name).stem == "big"] == ["big.png"]
    assert_offline(page, app, env)


def test_an_upload_over_the_size_limit(page: Page, app: App, folder: Path, env: dict[str, str]) -> None:
    """One byte over the limit: the page refuses it before sending (one message), and the server refuses it while it
    streams in (413), keeping nothing."""
    import httpx

    huge = folder / "huge.png"
    with open(huge, "wb") as file:
        file.truncate(MAX_UPLOAD_MB * MIB + 1)  # sparse: no disk used
    page.page.locator("#image-in input[type=file]").set_input_files(huge)
    message = error_shown(page.page, "huge.png")
    assert message == f'File(s) exceed the maximum allowed size of {MAX_UPLOAD_MB:.1f} Mb: "huge.png"'
    with open(huge, "rb") as file:
        answer = httpx.post(f"{app.url}gradio_api/upload", files={"files": ("huge.png", file)}, timeout=WAIT_MS / 1000)
    assert answer.status_code == 413, answer.text
    assert not [name for name in files_under(server_folder(env)) if "huge" in name]
    assert_offline(page, app, env)


def test_video(page: Page, app: App, clip: Path, env: dict[str, str]) -> None:
    import imageio_ffmpeg

    ui = page.page
    ui.get_by_role("tab", name="Video").click()
    ui.locator("#video-in input[type=file]").set_input_files(clip)
    ui.locator("#video-in video").wait_for(timeout=WAIT_MS)  # the upload is in (the button would run on nothing)
    ui.locator("#video-run").click()
    result = ui.locator("#video-out video")
    result.wait_for(timeout=WAIT_MS)
    # the browser can play it: H.264 in MP4, decoded to frames of the clip's size
    ui.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=result.element_handle(), timeout=WAIT_MS)
    assert result.evaluate("v => [v.videoWidth, v.videoHeight]") == [128, 96]
    link = ui.locator("#video-file a[download]")
    with ui.expect_download() as info:
        link.click()
    assert info.value.suggested_filename == "pan_depth.mp4"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(info.value.path())
    assert frames == FRAMES
    assert_offline(page, app, env)


def test_a_video_over_the_frame_limit(browser, app: App, folder: Path, env: dict[str, str]) -> None:
    """A header announcing more frames than the limit is refused before the first frame (the model's worker was held
    for the whole video before)."""
    page = Page(browser, app.url)  # the Video tab empty
    ui = page.page
    over = pattern_clip(folder / "over.mp4", MAX_VIDEO_FRAMES + 50, "32x32", 100)
    ui.get_by_role("tab", name="Video").click()
    ui.locator("#video-in input[type=file]").set_input_files(over)
    ui.locator("#video-in video").wait_for(timeout=WAIT_MS)
    ui.locator("#video-run").click()
    message = error_shown(ui, "over.mp4")
    frames, limit = MAX_VIDEO_FRAMES + 50, MAX_VIDEO_FRAMES
    assert message.startswith(f"over.mp4: {frames} frames is over the limit of {limit} frames"), message
    assert not [name for name in files_under(server_folder(env)) if "over_depth" in name]
    assert_offline(page, app, env)
    page.context.close()


def test_a_closed_page_leaves_nothing(browser, app: App, photo: Path, folder: Path, env: dict[str, str]) -> None:
    """The files of a page (its upload and its four results) go when it closes."""
    closing = folder / "closing.jpg"
    closing.write_bytes(photo.read_bytes())
    other = Page(browser, app.url)
    other.page.locator("#image-in input[type=file]").set_input_files(closing)
    other.page.locator("#image-status").filter(has_text="closing.jpg").wait_for(timeout=WAIT_MS)

    def mine() -> list[str]:
        return [name for name in files_under(server_folder(env)) if Path(name).stem == "closing"]

    assert len(mine()) == 1 + len(SUFFIXES)
    other.context.close()
    deadline = time.monotonic() + 30
    while mine() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert mine() == []


@pytest.fixture(scope="module")
def busy(browser, second: App, long_clip: Path):
    """Two pages of the second server, (one running a long video, one open for an image)."""
    second.wait()
    video_page, image_page = Page(browser, second.url), Page(browser, second.url)
    ui = video_page.page
    ui.get_by_role("tab", name="Video").click()
    ui.locator("#video-in input[type=file]").set_input_files(long_clip)
    ui.locator("#video-in video").wait_for(timeout=WAIT_MS)
    ui.locator("#video-run").click()
    running = "() => (document.querySelector('#video-status')?.textContent || '').includes('frames')"
    ui.wait_for_function(running, timeout=WAIT_MS)  # the progress bar (hidden under it): the video runs
    yield video_page, image_page
    for page in (video_page, image_page):
        page.context.close()


def video_running(video_page: Page) -> bool:
    return " fps in " not in video_page.page.locator("#video-status").inner_text()  # the summary line when done


def test_an_image_goes_through_while_a_video_runs(busy: tuple[Page, Page], photo: Path) -> None:
    """Image and video requests queue apart: an image waited for the whole video before."""
    video_page, image_page = busy
    image_page.page.locator("#image-in input[type=file]").set_input_files(photo)
    image_page.page.locator("#image-status").filter(has_text="scene.jpg").wait_for(timeout=WAIT_MS)
    assert video_running(video_page), video_page.page.locator("#video-status").inner_text()


def test_sigterm_during_a_video_leaves_nothing(second: App, busy: tuple[Page, Page]) -> None:
    """SIGTERM while a video runs and an upload streams in: exit 143 with one line, and nothing left in the
    server's temp folders (before: the uploads and results, 290 MB here, stayed behind)."""
    upload = SlowUpload(second.url, 64 * MIB)
    try:
        deadline = time.monotonic() + 30
        while sum(files_under(second.temp).values()) < 2 * MIB + 1 and time.monotonic() < deadline:
            time.sleep(0.2)  # until the upload is coming in
        during = files_under(second.temp)
        assert video_running(busy[0]), busy[0].page.locator("#video-status").inner_text()
        second.process.send_signal(signal.SIGTERM)
        status = second.process.wait(30)
    finally:
        upload.close()
    assert status == 143, second.log()
    second.stop()  # the last lines are in
    assert second.stderr[-1:] == ["beit-depth: stopped (SIGTERM)\n"], second.log()
    assert "Traceback" not in second.log()
    assert files_under(second.temp) == {}, f"left: {files_under(second.temp)}; during: {sum(during.values())} bytes"


def test_ctrl_c(app: App, page: Page, env: dict[str, str]) -> None:
    """Ctrl-C: exit status 130, one line; the URL was the one line on stdout."""
    assert_offline(page, app, env)
    assert app.stop() == 130, app.log()
    assert len(app.stdout) == 1 and app.url in app.stdout[0], app.log()
    assert app.stderr[-1:] == ["beit-depth: stopped (SIGINT)\n"], app.log()
    assert "Traceback" not in app.log(), app.log()
