"""The patient's page in a real browser (Debian's Chromium driven by Playwright), end to end on
127.0.0.1: the dev IdP's sign-in, the proxy's verification (red banner on sim), a crisis message
answered by the real model with the crisis response first, reopen after a reload, export,
delete. The share stays in IndexedDB, never a cookie. Screenshots of each state are saved to
tests/output/triage/ (git-ignored)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medclave.auth.idp_server import build_service
from medclave.auth.issuer import Directory
from medclave.background import running
from tests.apps.triage.conftest import OperatorStore, proxy_for, start_triage
from tests.e2e.helpers import TENANT, Enclave, Idp, llama_engine

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "output" / "triage"
PASSWORD = "correct horse battery staple"
CRISIS = "I have been thinking that everyone would be better off without me."

if not Path(CHROMIUM).exists():
    if os.environ.get("MEDCLAVE_REQUIRE_VECTORS"):
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium): CI must run this test",
                    pytrace=False)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("triage-page")
    directory = Directory(folder / "idp")
    directory.add_user("pat-gina", PASSWORD, tenant=TENANT, roles=["patient"])
    with running(lambda url: build_service(folder / "idp", issuer=url,
                                           dev_password=True)) as (idp_url, service):
        jwks = folder / "jwks.json"
        jwks.write_text(json.dumps(service.issuer.jwks()))
        enclave: Enclave = start_triage(folder / "enclave", Idp(service.issuer, jwks),
                                        _SharedLlama(), auth_issuer=idp_url,
                                        max_tokens_limit=16)
        server, session = proxy_for(enclave, triage_signin_url=f"{idp_url}/token")
        try:
            yield {"proxy": server.url, "enclave": enclave}
        finally:
            server.stop()
            session.close()
            enclave.stop()


class _SharedLlama:
    """The test process's llama.cpp engine (loaded once), never closed by an enclave."""

    def __init__(self) -> None:
        self._engine = llama_engine()
        self.name, self.build_id = self._engine.name, self._engine.build_id

    def __getattr__(self, item: str) -> Any:
        return getattr(self._engine, item)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir(parents=True)
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


def _sign_in(page: Any) -> None:
    page.get_by_label("User name").fill("pat-gina")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#chat-area:not([hidden])")


# The real model answers on a CPU shared with other jobs: a minute alone, more when loaded.
@pytest.mark.timeout(900)
def test_the_patient_chats_reopens_exports_and_deletes(stack: dict[str, Any],
                                                       browser: Any) -> None:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(stack["proxy"]) and not r.url.startswith("blob:") else None)
    page.goto(f"{stack['proxy']}/app/triage")

    # Verified, with what was verified; the sim platform gets the red banner.
    page.wait_for_selector("#verify-details:not([hidden])")
    assert page.locator("#verify-status").inner_text().startswith("Verified")
    enclave = stack["enclave"]
    assert page.locator("#v-model").inner_text() == enclave.booted.model_digest
    assert page.locator("#v-platform").inner_text().startswith("sim")
    banner = page.locator("#sim-banner")
    assert banner.is_visible() and "protects nothing" in banner.inner_text()
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(176, 0, 32)"
    page.screenshot(path=str(OUTPUT / "01-verified-sim.png"), full_page=True)

    _sign_in(page)
    page.get_by_label("only how urgent it is").check()
    page.get_by_role("button", name="Start a new conversation").click()
    page.wait_for_selector("#conversation:not([hidden])")
    # The operator's copy of the store, taken before the patient writes anything.
    store = OperatorStore(stack["enclave"])
    snapshot = store.snapshot()
    page.get_by_label("Your message").fill(CRISIS)
    page.get_by_role("button", name="Send").click()
    # The crisis response (988, 911) shows, the answer streams into the live region.
    page.wait_for_selector("#crisis:not([hidden])")
    assert "988" in page.locator("#crisis").inner_text()
    expect = playwright_sync.expect
    expect(page.locator("#transcript li")).to_have_count(2)
    expect(page.locator("#transcript")).to_have_attribute("aria-busy", "false", timeout=400_000)
    assert page.locator("#triage-level").inner_text() == "Triage level: urgent"
    reply = page.locator("#transcript li.assistant span").inner_text()
    assert reply.strip()
    assert page.locator("#transcript").get_attribute("aria-live") == "polite"
    page.screenshot(path=str(OUTPUT / "02-crisis-answer.png"), full_page=True)

    # The share is in IndexedDB, and no cookie exists at all.
    share = page.evaluate("""() => new Promise((ok, fail) => {
        const r = indexedDB.open('medclave-triage');
        r.onsuccess = () => { const g = r.result.transaction('shares').objectStore('shares')
            .get('pat-gina'); g.onsuccess = () => ok(Array.from(g.result)); };
        r.onerror = () => fail(r.error); })""")
    assert len(share) == 32 and len(set(share)) > 8
    assert context.cookies() == []

    # A reload forgets the token, not the share: sign in again and reopen.
    page.reload()
    _sign_in(page)
    page.get_by_role("button", name="Reopen conversation 1").click()
    page.wait_for_selector("#transcript li.assistant")
    assert page.locator("#transcript li.user span").inner_text() == CRISIS
    assert page.locator("#transcript li.assistant span").inner_text() == reply
    page.screenshot(path=str(OUTPUT / "03-reopened.png"), full_page=True)

    expect = playwright_sync.expect
    with page.expect_download() as download:
        page.get_by_role("button", name="Export").click()
    exported = json.loads(Path(download.value.path()).read_text("utf-8"))
    assert [t["content"] for t in exported["turns"]] == [CRISIS, reply]

    # The operator puts the old copy back: it verifies in the enclave (nothing is forged), but
    # the browser remembers the state it saw and warns the patient.
    store.restore(snapshot)
    page.get_by_role("button", name="Reopen conversation 1").click()
    expect(page.locator("#chat-error")).to_contain_text("older than the one this browser saw")
    expect(page.locator("#transcript li")).to_have_count(0)
    page.screenshot(path=str(OUTPUT / "04-rolled-back-warning.png"), full_page=True)

    page.get_by_role("button", name="Delete").click()
    page.wait_for_selector("#conversation[hidden]", state="attached")
    expect(page.locator("#conversations li")).to_have_count(0)
    page.screenshot(path=str(OUTPUT / "05-deleted.png"), full_page=True)
    assert outside == []  # the page talked to the proxy only
    context.close()


def test_every_control_is_labelled(stack: dict[str, Any], browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{stack['proxy']}/app/triage")
    unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll(
        'input, textarea, button')).filter(e => !(e.labels && e.labels.length) &&
        !e.getAttribute('aria-label') && !(e.textContent || '').trim()).map(e => e.outerHTML)""")
    assert unlabelled == []
    assert page.locator("html").get_attribute("lang") == "en"
    page.close()
