"""The clinician's page (``/app/scribe``) in Debian's Chromium driven by Playwright: a visit
recorded through the browser's MediaRecorder (Chromium's fake microphone plays a WAV), the
red banner on sim, the note with its spans, codes accepted and dropped, the FHIR resource
downloaded and copied; and a file uploaded instead."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from medclave.enclave.speech import Transcriber
from tests.conftest import REQUIRE
from tests.scribe.conftest import Stack, start_stack
from tests.scribe.visits import Visit, synthesize

CHROMIUM = "/usr/bin/chromium"
# Words Whisper tiny.en hears reliably in espeak-ng's voice even after Chromium's Opus
# recording (the page test checks the page, not the recogniser: tests/scribe/test_speech.py).
# One voice: the fake microphone loops the clip and the recording starts anywhere in it, so
# which voice speaks first is not known; with one voice the sections come from the words alone.
CLIP = Visit("page", (("D", "I think your asthma is not well controlled."),
                      ("D", "We will start a daily steroid inhaler.")), ("asthma",),
             ("J45.909",))


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory: pytest.TempPathFactory, transcriber: Transcriber
                  ) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("page"), transcriber)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.scribe.conftest import need_espeak

    need_espeak()
    path = tmp_path_factory.mktemp("clip") / "visit.wav"
    path.write_bytes(synthesize(CLIP))
    return path


def _browser(playwright, clip: Path):  # type: ignore[no-untyped-def]
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        if REQUIRE:
            pytest.fail("Chromium is required (MEDCLAVE_REQUIRE_VECTORS=1): apt-get install "
                        "chromium")
        pytest.skip("Chromium is not installed")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clip}"])


def test_record_in_the_browser_then_review_the_draft(browser_stack: Stack, clip: Path,
                                                     tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _browser(playwright, clip)
        context = browser.new_context(accept_downloads=True)
        context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"],
                                  origin=browser_stack.proxy_url)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{browser_stack.proxy_url}/app/scribe")
        banner = page.locator("#banner")
        expect(banner).to_have_attribute("data-state", "sim", timeout=60_000)
        expect(banner).to_contain_text("SIMULATED")
        assert page.evaluate("getComputedStyle(document.getElementById('banner'))"
                             ".backgroundColor") == "rgb(185, 28, 28)"  # red
        expect(page.locator('dd[data-field="Audio retention"]')).to_have_text("none")
        page.click("#record")
        expect(page.locator("#recording-state")).to_have_text("Recording…")
        page.wait_for_timeout(12000)  # the clip is about 5 s; the fake microphone loops it
        page.click("#stop")
        expect(page.locator("#recording-state")).to_contain_text("Recorded", timeout=10_000)
        page.fill("#patient", "pat-5")
        page.click("#send")
        expect(page.locator("#result")).to_be_visible(timeout=240_000)
        assessment = page.locator('ul[data-section="assessment"] li.statement')
        expect(assessment.first).to_contain_text("asthma")
        # A statement's transcript span lights up when the statement is pointed at.
        assessment.first.hover()
        sentence = assessment.first.get_attribute("data-sentence")
        span = page.locator(f'.span[data-sentence="{sentence}"]')
        expect(span).to_have_class("span hl")
        expect(span).to_contain_text("asthma")
        # Codes to accept or drop.
        rows = page.locator("#codes tbody tr")
        expect(rows.first).to_be_visible()
        first_code = rows.first.get_attribute("data-code")
        rows.first.locator('button[data-action="accept"]').click()
        expect(rows.first).to_have_class("code-accepted")
        if rows.count() > 1:
            rows.nth(1).locator('button[data-action="drop"]').click()
            expect(rows.nth(1)).to_have_class("code-dropped")
        with page.expect_download() as download_info:
            page.click("#download")
        saved = tmp_path / "fhir.json"
        download_info.value.save_as(saved)
        resource = json.loads(saved.read_text())
        assert resource["resourceType"] == "DocumentReference"
        assert resource["type"]["coding"][0]["code"] == "11506-3"
        assert resource["subject"]["reference"] == "Patient/pat-5"
        assert [r["display"].split()[1] for r in resource["context"]["related"]] == [first_code]
        page.click("#copy")
        expect(page.locator("#copy-state")).to_have_text("Copied.")
        assert json.loads(page.evaluate("navigator.clipboard.readText()")) == resource
        assert errors == []
        browser.close()


def test_upload_a_file_and_the_page_allows_nothing_else(browser_stack: Stack, clip: Path
                                                        ) -> None:
    import httpx
    from playwright.sync_api import expect, sync_playwright

    head = httpx.get(f"{browser_stack.proxy_url}/app/scribe", timeout=30)
    csp = head.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert httpx.get(f"{browser_stack.proxy_url}/app/scribe/..%2Fproxy.py",
                     timeout=30).status_code == 404
    with sync_playwright() as playwright:
        browser = _browser(playwright, clip)
        page = browser.new_page()
        page.goto(f"{browser_stack.proxy_url}/app/scribe")
        expect(page.locator("#banner")).to_have_attribute("data-state", "sim", timeout=60_000)
        page.set_input_files("#file", str(clip))
        page.click("#send")
        expect(page.locator("#result")).to_be_visible(timeout=240_000)
        expect(page.locator("#transcript")).to_contain_text("asthma")
        expect(page.locator("#codes tbody tr").first).to_be_visible()
        browser.close()
