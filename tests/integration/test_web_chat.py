"""The built-in web chat page in real headless Chromium: two people on two
pages (one a phone-sized screen) register, create a room, invite, join and
chat live; typing, read receipts, edits, replies, unread counts; a reload
keeps the session; back-pagination loads older messages."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .browser import WAIT_MS, browser_fixture, screenshot  # noqa: F401 (the browser fixture)
from .conftest import StartServer
from .room_helpers import create_room, send_text

pw = pytest.importorskip("playwright.async_api", reason="Python playwright is not installed")
expect = pw.expect

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def web_server(start_server: StartServer) -> HomeServer:
    return await start_server(COFFEECHAT_WEB_ENABLED="true")


def url(server: HomeServer) -> str:
    return f"http://127.0.0.1:{server.client_port}"


async def open_page(browser: Any, server: HomeServer, viewport: dict[str, int] | None = None) -> Any:
    context = await browser.new_context(viewport=viewport) if viewport else await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # anything the Content-Security-Policy blocked (inline code, outside fetches)
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.js_errors = errors
    await page.goto(url(server) + "/")
    return page


async def register(page: Any, name: str) -> None:
    await page.fill("#login-user", name)
    await page.fill("#login-password", PASSWORD)
    await page.click("#register-button")
    await expect(page.locator("#me")).to_have_text(f"@{name}:test.local", timeout=WAIT_MS)


async def log_in(page: Any, name: str, password: str = PASSWORD) -> None:
    await page.fill("#login-user", name)
    await page.fill("#login-password", password)
    await page.click("#login-button")
    await expect(page.locator("#me")).to_have_text(f"@{name}:test.local", timeout=WAIT_MS)


async def say(page: Any, text: str) -> None:
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")


def message(page: Any, text: str) -> Any:
    return page.locator("#timeline .event", has=page.locator(".body", has_text=text))


async def test_two_people_chat_live(browser: Any, web_server: HomeServer) -> None:
    alice = await open_page(browser, web_server)
    bob = await open_page(browser, web_server, PHONE)
    await register(alice, "alice")
    await register(bob, "bob")

    # alice creates a room and invites bob
    await alice.click("text=New room")
    await alice.fill("#create-name", "Coffee")
    await alice.click("#create-form button[type=submit]")
    await expect(alice.locator("#room-name")).to_have_text("Coffee", timeout=WAIT_MS)
    await alice.fill("#invite-user", "@bob:test.local")
    await alice.press("#invite-user", "Enter")
    await expect(alice.locator("#member-list")).to_contain_text("(invited)", timeout=WAIT_MS)

    # bob sees the invite (live, through /sync) and joins
    invite = bob.locator(".room-button", has_text="Coffee")
    await expect(invite.locator(".badge.invite")).to_be_visible(timeout=WAIT_MS)
    await invite.click()
    await bob.click("#accept-button")
    await expect(bob.locator("#composer-input")).to_be_enabled(timeout=WAIT_MS)

    # each sees the other's message
    await say(alice, "hello bob")
    await expect(message(bob, "hello bob")).to_be_visible(timeout=WAIT_MS)
    await say(bob, "hi alice")
    await expect(message(alice, "hi alice")).to_be_visible(timeout=WAIT_MS)
    await expect(alice.locator("#announce")).to_have_text("bob: hi alice")  # for screen readers
    await expect(alice.locator("#member-list")).to_contain_text("bob", timeout=WAIT_MS)

    # typing notifications and read receipts
    await bob.fill("#composer-input", "thinking")
    await bob.dispatch_event("#composer-input", "input")
    await expect(alice.locator("#typing")).to_contain_text("bob is typing", timeout=WAIT_MS)
    await expect(message(alice, "hello bob").locator(".receipts")).to_have_text("Seen by bob", timeout=WAIT_MS)

    # an edit and a reply, shown on the other side
    await message(alice, "hello bob").get_by_role("button", name="Edit").click()
    await expect(alice.locator("#composer-input")).to_have_value("hello bob")
    await say(alice, "hello bob, edited")
    edited = message(bob, "hello bob, edited")
    await expect(edited.locator(".edited")).to_have_text("(edited)", timeout=WAIT_MS)
    await message(bob, "hello bob, edited").get_by_role("button", name="Reply").click()
    await say(bob, "a reply to you")
    reply = message(alice, "a reply to you")
    await expect(reply.locator(".reply-quote")).to_contain_text("In reply to alice: hello bob, edited", timeout=WAIT_MS)
    await screenshot(alice, "chat-alice")
    await screenshot(bob, "chat-bob-phone")

    # an unread count on a room alice is not looking at
    await alice.click("text=New room")
    await alice.fill("#create-name", "Second")
    await alice.click("#create-form button[type=submit]")
    await expect(alice.locator("#room-name")).to_have_text("Second", timeout=WAIT_MS)
    await say(bob, "while you were away")
    badge = alice.locator(".room-button", has_text="Coffee").locator(".badge")
    await expect(badge).to_be_visible(timeout=WAIT_MS)

    # a reload keeps the session (and the room alice was in)
    await alice.click(".room-button >> text=Coffee")
    await alice.reload()
    await expect(alice.locator("#me")).to_have_text("@alice:test.local", timeout=WAIT_MS)
    await expect(alice.locator("#room-name")).to_have_text("Coffee", timeout=WAIT_MS)
    await expect(message(alice, "while you were away")).to_be_visible(timeout=WAIT_MS)
    await expect(message(alice, "hello bob, edited").locator(".edited")).to_be_visible(timeout=WAIT_MS)

    # leaving takes the room off the list
    await bob.click("#leave-button")
    await expect(bob.locator(".room-button", has_text="Coffee")).to_have_count(0, timeout=WAIT_MS)
    assert alice.js_errors == [] and bob.js_errors == []


async def test_back_pagination_and_join_by_alias(
    browser: Any, web_server: HomeServer, http: aiohttp.ClientSession
) -> None:
    carol = ApiClient(url(web_server), http)
    await carol.register("carol")
    room_id = await create_room(carol, {"name": "History", "preset": "public_chat", "room_alias_name": "history"})
    for i in range(45):
        await send_text(carol, room_id, f"old message {i}")
    page = await open_page(browser, web_server)
    await register(page, "dave")
    await page.click("text=Join a room")
    await page.fill("#join-target", "#history:test.local")
    await page.press("#join-target", "Enter")
    await expect(page.locator("#room-name")).to_have_text("History", timeout=WAIT_MS)
    await expect(message(page, "old message 44")).to_be_visible(timeout=WAIT_MS)
    assert await message(page, "old message 0").count() == 0
    for _ in range(10):  # bounded: 45 messages come in pages of 30
        if await page.locator("#room-start").is_visible():
            break
        before = await page.locator("#timeline .event").count()
        try:
            await page.locator("#older-button").click(timeout=2000)
        except pw.TimeoutError:
            pass  # scrolling to the button already reached the top, which loads the page by itself
        # a page loaded (more events), or the start of the room reached
        await page.wait_for_function(
            "n => document.querySelectorAll('#timeline .event').length !== n"
            " || !document.getElementById('room-start').hidden", arg=before, timeout=WAIT_MS)
    await expect(message(page, "old message 0")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#room-start")).to_be_visible(timeout=WAIT_MS)
    bodies = await page.locator("#timeline .body").all_inner_texts()
    olds = [b for b in bodies if b.startswith("old message")]
    assert olds == [f"old message {i}" for i in range(45)]
    await screenshot(page, "chat-back-pagination")
    assert page.js_errors == []


async def test_encrypted_room_note(browser: Any, web_server: HomeServer) -> None:
    page = await open_page(browser, web_server)
    await register(page, "erin")
    await page.evaluate("""async () => {
        const s = JSON.parse(localStorage.getItem('coffeechat.session'));
        const r = await fetch('/_matrix/client/v3/createRoom', {method: 'POST',
            headers: {'Authorization': 'Bearer ' + s.accessToken, 'Content-Type': 'application/json'},
            body: JSON.stringify({name: 'Secret', initial_state: [{type: 'm.room.encryption', state_key: '',
                content: {algorithm: 'm.megolm.v1.aes-sha2'}}]})});
        if (!r.ok) throw new Error(await r.text());
    }""")
    await page.locator(".room-button", has_text="Secret").click()
    await expect(page.locator("#e2e-note")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#composer-input")).to_be_disabled()
    await expect(page.locator("#timeline")).to_contain_text("turned on end-to-end encryption")


async def test_assets_cached_with_csp(web_server: HomeServer, http: aiohttp.ClientSession) -> None:
    base = url(web_server)
    for path in ("/", "/_coffeechat/", "/_coffeechat/static/chat.js", "/_coffeechat/admin/rooms/!x:test.local/dag"):
        async with http.get(base + path) as r:
            assert r.status == 200, path
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
            etag = r.headers["ETag"]
        async with http.get(base + path, headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
    async with http.get(base + "/_coffeechat/static/chat.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    async with http.get(base + "/_coffeechat/static/nope.js") as r:
        assert r.status == 404 and (await r.json())["errcode"] == "M_UNRECOGNIZED"
    async with http.get(base + "/_coffeechat/static/index.html") as r:
        assert r.status == 404


async def test_pages_off_unless_enabled(server: HomeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(url(server) + "/") as r:
        assert r.status == 404 and (await r.json())["errcode"] == "M_UNRECOGNIZED"
