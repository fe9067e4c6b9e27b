"""The admins' room DAG viewer in real headless Chromium: it draws a
room's events and prev_events edges, marks the forward extremity, and shows
the state at a selected event (chosen with the mouse or the keyboard)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .admin_helpers import make_admin
from .dag_fork import make_forked_room
from .browser import WAIT_MS, browser_fixture, screenshot  # noqa: F401 (the browser fixture)
from .conftest import StartServer
from .room_helpers import create_room, invite_and_join, q, send_text

pw = pytest.importorskip("playwright.async_api", reason="Python playwright is not installed")
expect = pw.expect

pytestmark = pytest.mark.slow


@pytest.fixture
async def web_server(start_server: StartServer) -> HomeServer:
    return await start_server(COFFEECHAT_WEB_ENABLED="true")


async def admin_page(browser: Any, server: HomeServer, http: aiohttp.ClientSession) -> Any:
    await make_admin(server, http)
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # anything the Content-Security-Policy blocked (inline code, outside fetches)
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.js_errors = errors
    # log in on the chat page: the viewer uses the same session
    await page.goto(f"http://127.0.0.1:{server.client_port}/")
    await page.fill("#login-user", "root")
    await page.fill("#login-password", "admin pw")
    await page.click("#login-button")
    await expect(page.locator("#me")).to_have_text("@root:test.local", timeout=WAIT_MS)
    return page


async def test_viewer_draws_room_and_state(browser: Any, web_server: HomeServer, http: aiohttp.ClientSession) -> None:
    alice = ApiClient(f"http://127.0.0.1:{web_server.client_port}", http)
    await alice.register("alice")
    bob = ApiClient(alice.base_url, http)
    await bob.register("bob")
    room_id = await create_room(alice, {"name": "Graph"})
    await invite_and_join(alice, bob, room_id)
    last = ""
    for i in range(8):
        last = await send_text(alice if i % 2 else bob, room_id, f"m{i}")
    page = await admin_page(browser, web_server, http)
    await page.goto(f"{alice.base_url}/_coffeechat/admin/rooms/{q(room_id)}/dag")
    data = (await ApiClient(alice.base_url, http).get(
        f"/_coffeechat/admin/v1/rooms/{q(room_id)}/dag", token=page_token(await session(page)), validate=False)).body
    total = data["total_events"]
    nodes = page.locator("#dag-nodes .node")
    await expect(nodes).to_have_count(total, timeout=WAIT_MS)
    await expect(page.locator("#dag-edges .edge")).to_have_count(len(data["edges"]))
    assert len(data["edges"]) == total - 1  # one chain: every event but the create has one prev event
    extremity = page.locator("#dag-nodes .node.extremity")
    await expect(extremity).to_have_count(1)
    assert await extremity.get_attribute("data-event-id") == last
    await expect(page.locator("#dag-summary")).to_contain_text(f"{total} of {total} events shown")
    # edges join the drawn nodes: each line ends at its event's and its prev event's circles
    for edge in data["edges"]:
        line = page.locator(f'#dag-edges .edge[data-from="{edge["from"]}"][data-to="{edge["to"]}"]')
        await expect(line).to_have_count(1)

    # select the newest event with the mouse: its details and the state after it
    await extremity.click()
    details = page.locator("#dag-details")
    await expect(details).to_contain_text(last, timeout=WAIT_MS)
    state_rows = page.locator("#dag-details .state-table tr")
    def row(event_type: str, state_key: str) -> Any:
        return state_rows.filter(has=page.locator("td:nth-child(1)", has_text=re.compile(f"^{re.escape(event_type)}$"))).filter(
            has=page.locator("td:nth-child(2)", has_text=re.compile(f"^{re.escape(state_key)}$")))

    await expect(row("m.room.name", "")).to_contain_text('"name":"Graph"')
    await expect(row("m.room.member", bob.user_id or "")).to_contain_text('"membership":"join"')
    await screenshot(page, "dag-selected")

    # the create event, reached with the keyboard: Tab to a node, Enter
    create = page.locator("#dag-nodes .node", has=page.locator("text=create ·"))
    await create.focus()
    await page.keyboard.press("Enter")
    await expect(details).to_contain_text("State after this event (1 entries)", timeout=WAIT_MS)
    # pan and zoom move the drawing
    before = await page.locator("#dag-viewport").get_attribute("transform")
    await page.click("#dag-zoom-in")
    await page.focus("#dag-svg")
    await page.keyboard.press("ArrowLeft")
    assert await page.locator("#dag-viewport").get_attribute("transform") != before
    assert page.js_errors == []


async def test_viewer_windows_a_long_room(browser: Any, web_server: HomeServer, http: aiohttp.ClientSession) -> None:
    alice = ApiClient(f"http://127.0.0.1:{web_server.client_port}", http)
    await alice.register("alice")
    room_id = await create_room(alice)
    sent = [await send_text(alice, room_id, f"m{i}") for i in range(230)]
    page = await admin_page(browser, web_server, http)
    await page.goto(f"{alice.base_url}/_coffeechat/admin/rooms/{q(room_id)}/dag")
    # a window of 200, not the whole room; "Older" loads the rest
    await expect(page.locator("#dag-nodes .node")).to_have_count(200, timeout=WAIT_MS)
    await expect(page.locator("#dag-summary")).to_contain_text(re.compile(r"^200 of 2\d\d events shown"))
    await page.click("#dag-older")
    await expect(page.locator("#dag-older")).to_be_disabled(timeout=WAIT_MS)
    summary = await page.locator("#dag-summary").inner_text()
    shown = re.match(r"^(\d+) of (\d+) events shown", summary)
    assert shown and shown[1] == shown[2] and int(shown[1]) > 230, summary
    await expect(page.locator("#dag-nodes .node")).to_have_count(int(shown[1]))
    # jump to an event by id: a window around it, the event selected
    await page.fill("#dag-jump-id", sent[100])
    await page.press("#dag-jump-id", "Enter")
    await expect(page.locator("#dag-details")).to_contain_text(sent[100], timeout=WAIT_MS)
    await expect(page.locator(f'#dag-nodes .node.selected[data-event-id="{sent[100]}"]')).to_have_count(1)
    await screenshot(page, "dag-window")
    assert page.js_errors == []


async def test_viewer_draws_fork_and_merge(browser: Any, web_server: HomeServer, http: aiohttp.ClientSession) -> None:
    alice = ApiClient(f"http://127.0.0.1:{web_server.client_port}", http)
    await alice.register("alice")
    room = await make_forked_room(web_server, alice)
    page = await admin_page(browser, web_server, http)
    await page.goto(f"{alice.base_url}/_coffeechat/admin/rooms/{q(room.room_id)}/dag")

    def node(event_id: str) -> Any:
        return page.locator(f'#dag-nodes .node[data-event-id="{event_id}"]')

    await expect(node(room.merge)).to_have_class(re.compile(r"\bmerge\b"), timeout=WAIT_MS)
    await expect(node(room.merge)).to_have_class(re.compile(r"\bextremity\b"))
    await expect(page.locator("#dag-summary")).to_contain_text("1 merge, 1 depth with parallel events")
    # both branches drawn side by side (same row, different columns), both joined to the fork point and the merge
    main_at = await node(room.main).get_attribute("transform")
    fork_at = await node(room.fork).get_attribute("transform")
    assert main_at and fork_at and main_at != fork_at
    assert main_at.split(",")[1] == fork_at.split(",")[1]  # same y: same depth
    for child, parent in ((room.main, room.fork_point), (room.fork, room.fork_point),
                          (room.merge, room.main), (room.merge, room.fork)):
        await expect(page.locator(f'#dag-edges .edge[data-from="{child}"][data-to="{parent}"]')).to_have_count(1)
    # select the merge: the topic was in conflict between the branches
    await node(room.merge).click()
    conflicts = page.locator("#dag-details .conflict-table")
    await expect(conflicts).to_contain_text("m.room.topic", timeout=WAIT_MS)
    await expect(conflicts).to_contain_text(room.resolved_topic)
    await expect(page.locator("#dag-details")).to_contain_text("Merge: 1 state key in conflict")
    await expect(node(room.main)).to_have_class(re.compile(r"\bconflict\b"))
    await expect(node(room.fork)).to_have_class(re.compile(r"\bconflict\b"))
    await screenshot(page, "dag-fork-merge")
    assert page.js_errors == []


async def test_viewer_refuses_non_admins(browser: Any, web_server: HomeServer) -> None:
    page = await (await browser.new_context()).new_page()
    base = f"http://127.0.0.1:{web_server.client_port}"
    await page.goto(base + "/")
    await page.fill("#login-user", "mallory")
    await page.fill("#login-password", "pw pw pw pw")
    await page.click("#register-button")
    await expect(page.locator("#me")).to_have_text("@mallory:test.local", timeout=WAIT_MS)
    await page.goto(f"{base}/_coffeechat/admin/rooms/{q('!x:test.local')}/dag")
    await expect(page.locator("#dag-error")).to_contain_text("M_FORBIDDEN", timeout=WAIT_MS)


async def session(page: Any) -> dict[str, Any]:
    stored: dict[str, Any] = await page.evaluate("JSON.parse(localStorage.getItem('coffeechat.session'))")
    return stored


def page_token(s: dict[str, Any]) -> str:
    return str(s["accessToken"])
