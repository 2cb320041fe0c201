"""The web app (`nulltext serve`): its callbacks, the launched server through gradio_client, and a real browser.

Every edit is the bundled model's colour swap of a bundled test photo, judged by the bundled evaluator:
the shape turns the target colour, keeps its class, and the background outside the shape is kept
(PSNR against the photo). Few DDIM steps (10, at most 5 Adam iterations each) keep the file fast.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageFilter

from nulltext.app import Session, WebApp, launch
from nulltext.bundled import data
from nulltext.bundled.judge import judge
from nulltext.evaluation.study_photos import colour_swap
from nulltext.io.images import read_png_metadata
from nulltext.inversion.file import load_inversion, save_inversion
from nulltext.evaluation.metrics import psnr

FAST = dict(method="null-text", steps=10, guidance=7.5, trials=4, optimizer="secant")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def no_progress(*args, **kwargs) -> None:
    pass


def photo_file(folder: Path, index: int) -> tuple[Path, str, str, data.Scene]:
    """A bundled test photo written as a PNG upload, its caption, its colour-swap target and its scene."""
    image, caption = data.sample("test", index)
    path = folder / f"photo_{index}.png"
    image.save(path)
    scene = data.scene("test", index)
    return path, caption, colour_swap(scene)[0], scene


def bomb_png(path: Path) -> Path:
    """A 40000×40000 PNG header over 64 bytes of data: a decompression bomb, refused before any pixel is decoded."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def assert_colour_swap(edited: Image.Image, index: int, target: str) -> float:
    """The edit shows the target colour on the photo's shape and background; returns the background PSNR."""
    scene, photo = data.scene("test", index), data.sample("test", index)[0]
    edited = edited.convert("RGB").resize(photo.size, Image.Resampling.BOX) if edited.size != photo.size else edited.convert("RGB")
    j = judge(edited)
    assert (j.colour, j.shape, j.background) == (target.split()[1], scene.shape, scene.background), j
    shape = Image.fromarray(data.shape_mask(scene, photo.width).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(7))
    outside = np.asarray(shape) == 0  # the background, 3 px clear of the shape's edge
    kept = psnr(edited, photo, mask=outside)
    assert kept > 25.0, f"background PSNR {kept:.1f} dB"
    return kept


@pytest.fixture(scope="module")
def app(bundled):
    return WebApp(bundled)


@pytest.fixture(scope="module")
def inverted(app, tmp_path_factory):
    """Photo 829 ("a red circle on a blue background") inverted through the app's callback, with its progress calls."""
    folder = tmp_path_factory.mktemp("app")
    path, caption, target, scene = photo_file(folder, data.DEMO_INDEX)
    session, calls = Session(), []
    out = app.invert(session, str(path), caption, **FAST, progress=lambda value, desc=None: calls.append((value, desc)))
    return session, out, calls, target


def test_invert_then_edit_twice_from_the_kept_inversion(app, inverted):
    session, (state, status, gallery, attention, downloads, mask), calls, target = inverted
    assert state is session and session.inversion is not None and session.inversion.num_steps == 10
    steps = [value for value, desc in calls if isinstance(value, tuple)]
    assert steps == [(k, 10) for k in range(1, 11)]  # the bar moves once per step …
    assert all("loss" in desc for value, desc in calls if isinstance(value, tuple))  # … and shows the loss
    reported = float(status.split("PSNR **")[1].split(" dB")[0])
    assert reported > 22.0 and [label for _, label in gallery] == ["photo", "reconstruction"]
    assert [label for _, label in attention] == ["reconstruction", "a", "red", "circle", "on", "a", "blue", "background", "<|endoftext|>"]
    nti = load_inversion(downloads[0], app.model)  # the download is a complete .nti of this model
    assert nti.prompt == session.inversion.prompt and nti.latent_T.equal(session.inversion.latent_T)
    assert mask["background"].shape[:2] == (256, 256)  # the mask editor shows the photo, large enough to paint

    jobs = len(app.log)
    gallery, edited, files, note, maps = app.edit(session, target, "auto", 0.8, 0.4, "", "circle", "", None, no_progress)
    assert_colour_swap(edited, data.DEMO_INDEX, target)
    # the target caption's cross-attention per token (their values: tests/test_editing_mechanics.py)
    assert [label for _, label in maps] == [target, "a", "green", "circle", "on", "a", "blue", "background", "<|endoftext|>"]
    assert note == "Edited: 1 target caption(s)."  # "circle" leads attention on the circle: no warning

    # the gallery ends with where the edit was allowed to change the photo: bright on the circle, dimmed elsewhere
    assert [label for _, label in gallery][-2:] == [target, f"changed: {target}"]
    side = session.inversion.image_size[0]  # the gallery shows it enlarged; compare at the photo's size
    shown = np.asarray(gallery[-1][0].resize((side, side), Image.Resampling.NEAREST), dtype=np.float64).mean(-1)
    circle = data.shape_mask(data.scene("test", data.DEMO_INDEX, side), side)
    assert shown[circle].mean() > 2 * shown[~circle].mean()
    meta = read_png_metadata(files[0])
    assert meta["target_prompt"] == target and meta["blend_words"] == '["circle"]' and meta["source_prompt"] == nti.prompt
    assert assert_colour_swap(Image.open(files[0]), data.DEMO_INDEX, target) > 25
    # a second edit (another word, a drawn mask) samples again from the same inversion: no re-inversion
    painted = np.zeros((256, 256, 4), np.uint8)
    painted[64:192, 64:192, 3] = 255  # the circle's middle, painted
    yellow = target.replace("green", "yellow")
    gallery, edited, files, note, _ = app.edit(session, yellow, "replace", 0.8, 0.4, "", "circle", "", {"layers": [painted]},
                                            no_progress)
    assert_colour_swap(edited, data.DEMO_INDEX, yellow)
    assert [j.kind for j in app.log[jobs:]] == ["edit", "edit"]


def test_the_papers_adam_is_a_choice(app, tmp_path):
    """The optimiser radio: "adam" inverts with the paper's Adam, the slider capping its updates per step."""
    path, caption, _, _ = photo_file(tmp_path, 0)
    session = Session()
    app.invert(session, str(path), caption, **{**FAST, "steps": 3, "trials": 4, "optimizer": "adam"}, progress=no_progress)
    config = session.inversion.config
    assert (config.optimizer, config.inner_steps, config.num_steps) == ("adam", 4, 3)
    assert 0 < max(session.inversion.inner_iterations) <= 4


def test_caption_it_and_the_blend_words_prefilled_from_the_word_diff(app, inverted, tmp_path, tiny):
    """"Caption it" writes the photo's caption (the bundled captioner on the bundled model; a one-line error
    on a model with no captioner); typing targets shows their word changes and fills the blend box with
    `--blend auto`'s words, unless the user typed words of their own there."""
    session, _, _, target = inverted
    path, caption, _, _ = photo_file(tmp_path, 3)
    assert app.caption(str(path)) == caption and app.log[-1].kind == "caption"
    with pytest.raises(gr.Error, match="--captioner") as e:
        WebApp(tiny).caption(str(path))
    assert "\n" not in str(e.value)
    fresh = Session(inversion=session.inversion)
    state, blend, shown = app.word_changes(fresh, target, "")
    assert (blend, shown) == ("red, green", 'edit 1: "red" → "green"')
    longer = target + "\n" + session.inversion.prompt.replace("circle", "square")
    state, blend, shown = app.word_changes(fresh, longer, blend)  # the page's own words follow the targets
    assert blend == "red, green, circle, square" and shown.endswith('edit 2: "circle" → "square"')
    assert app.word_changes(fresh, target, "circle")[1] == "circle"  # the user's own words stay
    assert app.word_changes(Session(), target, "")[1:] == ("", "")  # nothing inverted yet: nothing to compare


def test_an_edits_warnings_are_shown_in_its_note(app, inverted, monkeypatch):
    session, _, _, target = inverted
    line = "blend word 'on' draws at most 1% of the source caption's attention at any pixel"
    monkeypatch.setattr("nulltext.editing.from_inversion.weak_blend_words", lambda *args: [line])
    *_, note, _ = app.edit(session, target, "auto", 0.8, 0.4, "", "on", "", None, no_progress)
    assert note == f"Edited: 1 target caption(s). ⚠ {line}."


def test_cancel_stops_within_one_step_and_keeps_the_earlier_inversion(app, inverted, tmp_path):
    session = inverted[0]
    kept = session.inversion
    path, caption, *_ = photo_file(tmp_path, 0)
    seen = []

    def press_cancel_at_step_3(value, desc=None):
        if isinstance(value, tuple):
            seen.append(value[0])
            if value[0] == 3:
                app.cancel(session)  # what the Cancel button calls, on this session's state

    out = app.invert(session, str(path), caption, **FAST, progress=press_cancel_at_step_3)
    assert seen == [1, 2, 3] and "cancelled after step 3/10" in out[1]
    assert session.inversion is kept and not session.cancel_requested
    assert all(o is gr.skip() or o == gr.skip() for o in out[2:])  # the page keeps the earlier results


def test_bad_inputs_are_one_line_errors_and_the_app_keeps_serving(app, tiny, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    from nulltext.io.images import to_tensor
    from nulltext.inversion import InversionConfig, invert

    image, caption = data.sample("test", 1, 32)
    foreign = save_inversion(invert(tiny, to_tensor(image), caption, InversionConfig(num_steps=2, trials=1)),
                             tmp_path / "tiny.nti")
    cases = [
        (lambda: app.invert(Session(), str(bomb), "a red circle", **FAST, progress=no_progress), "too large"),
        (lambda: app.invert(Session(), str(not_image), "a red circle", **FAST, progress=no_progress), "not a recognised image"),
        (lambda: app.invert(Session(), str(not_image), "", **FAST, progress=no_progress), "type a caption"),
        (lambda: app.invert(Session(), str(bomb), "a red circle", **{**FAST, "optimizer": "lbfgs"}, progress=no_progress),
         "unknown optimiser"),
        (lambda: app.load_nti(Session(), str(foreign), no_progress), "was made with model"),
        (lambda: app.edit(Session(), "a green circle", "auto", 0.8, 0.4, "", "", "", None, no_progress), "invert a photo first"),
        (lambda: app.edit(Session(inversion=load_inversion(foreign)), "x", "auto", 0.8, 0.4, "red=big", "", "", None,
                          no_progress), "is not WORD=SCALE"),
    ]
    for call, words in cases:
        with pytest.raises(gr.Error) as caught:
            call()
        assert words in caught.value.message and "\n" not in caught.value.message, caught.value.message


def test_serve_command_binds_locally_by_default(monkeypatch, capsys):
    from nulltext import app as app_module, cli

    calls = []
    monkeypatch.setattr("nulltext.cli.commands._load_model", lambda args: "the model")
    monkeypatch.setattr(app_module, "launch", lambda model, **kw: calls.append((model, kw)))
    assert cli.main(["serve", "--quiet"]) == 0
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "8000", "--share", "on", "--quiet"]) == 0
    assert calls == [("the model", dict(host="127.0.0.1", port=7860, share=False, quiet=True, captioner=None)),
                     ("the model", dict(host="0.0.0.0", port=8000, share=True, quiet=True, captioner=None))]
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# the launched server


@pytest.fixture(scope="module")
def server(bundled):
    page, web = launch(bundled, host="127.0.0.1", port=None, quiet=True, block=False)
    try:
        yield page.local_url, web, page
    finally:
        page.close()


def test_two_clients_at_once_both_finish_one_after_the_other(server, tmp_path):
    from gradio_client import Client, handle_file

    url, web, page = server
    assert url.startswith("http://127.0.0.1:") and not page.analytics_enabled  # local only, no telemetry
    before = len(web.log)
    users = [(Client(url, verbose=False), *photo_file(tmp_path, i)) for i in (data.DEMO_INDEX, 0)]
    jobs = [c.submit(handle_file(str(path)), caption, *FAST.values(), api_name="/invert")
            for c, path, caption, target, scene in users]
    from gradio_client.utils import Status

    seen = [set(), set()]
    while not all(job.done() for job in jobs):  # the second user's job waits in the queue, and is told so
        for job, codes in zip(jobs, seen):
            update = job.status()
            codes.add((update.code, update.rank) if update.code == Status.IN_QUEUE else update.code)
        time.sleep(0.05)
    assert any((Status.IN_QUEUE, 0) in codes for codes in seen) and all(Status.PROGRESS in codes for codes in seen)
    statuses = [job.result(timeout=300)[0] for job in jobs]
    assert all("PSNR" in s for s in statuses), statuses
    edits = [c.submit(target, "auto", 0.8, 0.4, "", scene.shape, "", None, api_name="/edit")
             for c, path, caption, target, scene in users]
    for job, (c, path, caption, target, scene), index in zip(edits, users, (data.DEMO_INDEX, 0)):
        gallery, edited, files, note, maps = job.result(timeout=300)
        assert_colour_swap(Image.open(edited), index, target)  # each user edits their own photo
        assert read_png_metadata(files[0]["path"] if isinstance(files[0], dict) else files[0])["target_prompt"] == target
    ran = sorted(web.log[before:], key=lambda j: j.start)
    assert [j.kind for j in ran].count("invert") == 2 and [j.kind for j in ran].count("edit") == 2
    assert all(a.end <= b.start for a, b in zip(ran, ran[1:]))  # one model job at a time


def call_api(url: str, api: str, data: list) -> tuple[str, str | None]:
    """One call of an app endpoint over HTTP, as any client could send it: (SSE event, its error message)."""
    import httpx

    event = httpx.post(url + f"gradio_api/call/{api}", json={"data": data}, timeout=120).json()["event_id"]
    answer = httpx.get(url + f"gradio_api/call/{api}/{event}", timeout=120).text
    kind = next(line.split(":", 1)[1].strip() for line in answer.splitlines() if line.startswith("event:"))
    payload = json.loads(next(line.split(":", 1)[1] for line in answer.splitlines() if line.startswith("data:")))
    return kind, (payload or {}).get("error") if kind == "error" else None  # None: the server hid its text


def upload(url: str, name: str, content: bytes) -> dict:
    """A file sent the way the page sends it: multipart upload, then a FileData with Gradio's meta marker."""
    import httpx

    answer = httpx.post(url + "gradio_api/upload", files={"files": (name, content, "application/octet-stream")})
    answer.raise_for_status()
    return {"path": answer.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def test_a_request_naming_a_server_path_never_opens_it(server, tmp_path):
    from gradio.utils import get_upload_folder

    url, web, page = server
    secret = tmp_path / "secret.png"  # a real image the server must never read
    data.sample("test", 0)[0].save(secret)
    nti = tmp_path / "secret.nti"
    nti.write_bytes(b"not for you")
    fifo = tmp_path / "fifo.png"  # opening it to read would block the server
    os.mkfifo(fifo)
    for planted in (secret, nti):
        os.utime(planted, (1, time.time()))  # atime far before mtime: any read moves it (relatime)
    jobs = len(web.log)
    through_uploads = os.path.join(get_upload_folder(), *[".."] * 12, *secret.parts[1:])  # '../' out of the folder
    caption = data.sample("test", 0)[1]
    for path in (str(secret), os.path.relpath(secret), through_uploads, str(fifo)):
        for meta in ({}, {"meta": {"_type": "gradio.FileData"}}):
            kind, message = call_api(url, "invert", [{"path": path, **meta}, caption, "null-text", 2, 7.5, 1, "secant"])
            assert kind == "error", (path, meta)
            if not meta:  # Gradio's own check refuses the meta form and hides its text (show_error is off)
                assert "not a file uploaded to this server" in message and "\n" not in message, message
    for meta in ({}, {"meta": {"_type": "gradio.FileData"}}):  # the .nti field and the mask's layers alike
        assert call_api(url, "load_nti", [{"path": str(nti), **meta}])[0] == "error"
        mask = {"background": {"path": str(secret), **meta}, "layers": [{"path": str(fifo), **meta}], "composite": None}
        assert call_api(url, "edit", ["a green circle", "auto", 0.8, 0.4, "", "", "", mask])[0] == "error"
    assert os.stat(secret).st_atime == 1 and os.stat(nti).st_atime == 1  # never read
    with pytest.raises(OSError):  # ENXIO: no process holds the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert len(web.log) == jobs  # no model job ran


def test_the_upload_limit_holds_however_a_file_is_sent_and_the_server_keeps_serving(server):
    import httpx

    url, web, page = server
    assert web.max_upload == 20 << 20
    big = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", b"\0" * (21 << 20), "image/png")})
    assert big.status_code == 413  # multipart over the 20 MB limit, refused before any decoding

    def chunked():  # the same body sent in chunks, without a Content-Length
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(21):
            yield b"\0" * (1 << 20)
        yield b"\r\n--b--\r\n"

    streamed = httpx.post(url + "gradio_api/upload", content=chunked(),
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    inline = "data:image/png;base64," + base64.b64encode(b"\0" * (21 << 20)).decode()
    kind, message = call_api(url, "invert", [{"path": "photo.png", "url": inline}, "a red circle", "null-text", 2, 7.5, 1, "secant"])
    assert kind == "error" and "over the 20 MB upload limit" in message and "\n" not in message, message
    image, caption = gradio_client_example(url, 0)  # and the server still serves
    assert caption == data.sample("test", 0)[1] and np.array_equal(np.asarray(Image.open(image).convert("RGB")),
                                                                    np.asarray(data.sample("test", 0)[0]))


def gradio_client_example(url: str, index: int):
    from gradio_client import Client

    return Client(url, verbose=False).predict(f"{data.sample('test', index)[1]} (test photo {index})", api_name="/example")


def test_files_that_fail_preprocessing_are_one_line_naming_no_server_path(server, tmp_path):
    from gradio.utils import get_upload_folder

    url, web, page = server
    caption = data.sample("test", 0)[1]
    bomb = bomb_png(tmp_path / "bomb.png").read_bytes()
    cases = [("invert", [upload(url, "notes.png", b"not an image"), caption, "null-text", 2, 7.5, 1, "secant"], "not an image"),
             ("invert", [upload(url, "bomb.png", bomb), caption, "null-text", 2, 7.5, 1, "secant"], "more pixels"),
             ("edit", ["a green circle", "auto", 0.8, 0.4, "", "", "",
                       {"background": None, "layers": [upload(url, "layer.png", b"junk")], "composite": None}],
              "not an image")]
    for api, payload, words in cases:
        kind, message = call_api(url, api, payload)
        assert kind == "error" and words in message, message
        assert "\n" not in message and "/" not in message and get_upload_folder() not in message, message


def test_the_gate_lets_through_an_inline_photo_within_the_limit_and_nothing_unreceived(tmp_path):
    from nulltext.app_uploads import GatedBlocks

    with GatedBlocks() as page:
        pass
    page.max_file_size = 1 << 10
    small = "data:image/png;base64," + base64.b64encode(b"\0" * 700).decode()
    page.check({"path": "x.png", "url": small}, "photo", reads_inline=True)  # gr.Image decodes it, path unused
    for file, words in [({"path": "x.png", "url": small}, "not a file uploaded"),  # a field that reads the path
                        ({"path": "x.png", "url": small + "AAAA" * 200}, "over the 0.000977 MB upload limit"),
                        ({"path": str(tmp_path)}, "not a file uploaded"), ({"url": "http://127.0.0.1/x"}, "not a file")]:
        with pytest.raises(gr.Error) as refused:
            page.check(file, "photo", reads_inline=not words.startswith("not"))
        assert words in refused.value.message, refused.value.message


def test_cancel_button_through_the_server(server, tmp_path):
    from gradio_client import Client, handle_file

    url, web, page = server
    client = Client(url, verbose=False)
    path, caption, *_ = photo_file(tmp_path, 2)
    job = client.submit(handle_file(str(path)), caption, "null-text", 40, 7.5, 5, "secant", api_name="/invert")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first step report, then press Cancel
        progress = job.status().progress_data
        if progress and progress[0].index:
            break
        time.sleep(0.1)
    assert progress and progress[0].length == 40 and "loss" in progress[0].desc
    client.predict(api_name="/cancel")
    status = job.result(timeout=120)[0]
    stopped = int(status.split("after step ")[1].split("/")[0])
    assert "cancelled" in status and stopped < 40


# ---------------------------------------------------------------------------------------------
# a real browser


def chromium_driver():
    """Headless Debian chromium through its chromedriver; no browser or driver download."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)} — apt-get install -y chromium chromium-driver "
                    "(`make test` installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1600",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def requested_urls(driver) -> set[str]:
    """The URLs the page requested so far, from Chrome's network log."""
    import json

    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return {e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"}


READ_PIXELS = """
const img = document.querySelector('#edited img');
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)];
"""


def test_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, web, page = server
    path, caption, target, scene = photo_file(tmp_path, data.DEMO_INDEX)
    driver = chromium_driver()
    try:
        wait = WebDriverWait(driver, 180)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))  # the upload has arrived
        driver.find_element(By.ID, "caption-it").click()  # the bundled captioner writes the caption
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#caption textarea").get_attribute("value") == caption)
        driver.find_element(By.XPATH, "//button[contains(., 'Advanced')]").click()
        for elem, value in (("steps", FAST["steps"]), ("inner", FAST["trials"])):
            box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem} input[type=number]"))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(value), Keys.TAB)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))  # the upload has arrived
        driver.find_element(By.ID, "invert").click()
        wait.until(lambda d: "PSNR" in d.find_element(By.ID, "status").text)
        assert "10 steps" in driver.find_element(By.ID, "status").text
        driver.find_element(By.CSS_SELECTOR, "#targets textarea").send_keys(target)
        blend = driver.find_element(By.CSS_SELECTOR, "#blend textarea")  # filled in from the word diff, and shown
        wait.until(lambda d: blend.get_attribute("value") == "red, green" and "→" in d.find_element(By.ID, "changes").text)
        assert driver.find_element(By.ID, "changes").text == 'edit 1: "red" → "green"'
        blend.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        blend.send_keys(scene.shape)
        driver.find_element(By.ID, "edit").click()
        width, height, rgba = wait.until(lambda d: d.execute_script(READ_PIXELS))
        shown = Image.fromarray(np.array(rgba, np.uint8).reshape(height, width, 4)[..., :3])
        assert assert_colour_swap(shown, data.DEMO_INDEX, target) > 25
        urls = requested_urls(driver)
        assert any("/upload" in u for u in urls)
        assert all(u.startswith((url.rstrip("/"), "data:", "blob:")) for u in urls), sorted(urls)  # nothing leaves the machine
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "app_screenshot.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        if os.environ.get("NULLTEXT_APP_SCREENSHOT"):  # the README's picture: NULLTEXT_APP_SCREENSHOT=docs/app_screenshot.png
            shutil.copy(shot, os.environ["NULLTEXT_APP_SCREENSHOT"])

        # the sketch tool: paint a square over part of the circle, no blend words — only the painted part turns green
        driver.find_element(By.XPATH, "//button[contains(., 'More edit controls')]").click()
        canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "canvas"))
        canvas = max(canvas, key=lambda c: c.size["width"] * c.size["height"])
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        ActionChains(driver).move_to_element_with_offset(canvas, -20, -20).click_and_hold().move_by_offset(40, 0) \
            .move_by_offset(0, 40).move_by_offset(-40, 0).release().perform()
        driver.find_element(By.CSS_SELECTOR, "#blend textarea").send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        driver.find_element(By.ID, "edit").click()
        width, height, rgba = wait.until(lambda d: (lambda r: r if r and r[2] != rgba else None)(d.execute_script(READ_PIXELS)))
        masked = np.array(rgba, np.uint8).reshape(height, width, 4)[..., :3].astype(float)
        inside = data.shape_mask(scene, width)
        near = {name: (np.linalg.norm(masked - data.PALETTE[name], axis=-1) < 60)[inside].mean() for name in ("red", "green")}
        assert near["green"] > 0.15 and near["red"] > 0.15, near  # part of the circle edited, part kept
    finally:
        driver.quit()
