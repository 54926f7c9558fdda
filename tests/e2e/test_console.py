"""The operator console in a real browser (Debian's Chromium driven by Playwright) against the
whole stack: the seed's steps end to end, as an operator clicks them. Screenshots of the main
pages land in `screenshots/` (git-ignored) for a reviewer."""

import hashlib
import hmac
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import ROOT, Stack
from tests.e2e.test_walkthrough import create_workspace, poll

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium found: `make test-browser` installs Debian's package when run as root, "
        "or run `apt-get install chromium`"
    )


@dataclass
class Console:
    page: Page
    stack: Stack
    admin_key: str
    errors: list[str]

    def go(self, hash_path: str) -> None:
        self.page.goto(f"{self.stack.url}/console/#{hash_path}")

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        shown = self.page.locator("#main").inner_text()
        assert "[object " not in shown
        assert not re.search(r"^null$", shown, re.MULTILINE)
        self.page.evaluate("document.getElementById('toast').classList.remove('shown')")
        self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)

    def api(self) -> httpx.Client:
        return self.stack.client(self.admin_key)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def console(stack: Stack, browser: Browser) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    yield Console(page, stack, create_workspace(stack, "console"), errors)
    context.close()


def flow_id_of(page: Page) -> str:
    found = re.search(r"#/flows/(flw_\w+)", page.url)
    assert found, page.url
    return found[1]


def trigger_id_of(page: Page) -> str:
    found = re.search(r"#/triggers/(trg_\w+)$", page.url)
    assert found, page.url
    return found[1]


# --- serving --------------------------------------------------------------------------------


def test_the_root_redirects_to_the_console_whose_pages_run_only_their_own_scripts(
    stack: Stack,
) -> None:
    root = httpx.get(f"{stack.url}/", follow_redirects=False)
    assert root.status_code in (302, 307)
    assert root.headers["location"].startswith("/console")
    page = httpx.get(f"{stack.url}/console/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in re.sub(r'<script type="module" src="[^"]+"></script>', "", page.text)
    module = httpx.get(f"{stack.url}/console/js/app.js")
    assert module.status_code == 200
    assert "javascript" in module.headers["content-type"]


# --- the seed's steps -----------------------------------------------------------------------


def test_a_key_that_is_refused_is_shown_next_to_the_key_field(console: Console) -> None:
    console.go("/flows")
    page = console.page
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Workspace admin key").fill("not-a-key")
    page.get_by_label("Workspace admin key").press("Enter")
    expect(page.locator("#main .field-error")).to_contain_text("malformed_key")
    expect(page.get_by_label("Workspace admin key")).to_have_attribute("aria-invalid", "true")


def test_an_admin_signs_in_and_the_key_stays_in_the_tab_s_session_storage_only(
    console: Console,
) -> None:
    page = console.page
    page.get_by_label("Workspace admin key").fill(console.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Flows")).to_be_visible()
    storage = page.evaluate("() => ({...sessionStorage})")
    assert console.admin_key in storage.values()
    assert page.evaluate("() => localStorage.length") == 0
    assert page.context.cookies() == []
    assert page.evaluate("() => document.cookie") == ""


def test_registering_a_flow_picks_a_function_the_runners_announce(console: Console) -> None:
    page = console.page
    page.get_by_role("link", name="Register a flow").click()
    expect(page.get_by_role("heading", name="Register a flow")).to_be_visible()
    console.shot("flow-register")
    expect(page.get_by_text("Announced by the runners")).to_contain_text("echo")
    page.get_by_label("Name").fill("greeter")
    page.get_by_label("Function").fill("echo")
    page.get_by_label("Function").press("Enter")
    expect(page.get_by_role("heading", name="greeter")).to_be_visible()
    assert flow_id_of(page)
    console.go("/flows")
    expect(page.get_by_role("link", name="greeter")).to_be_visible()
    console.shot("flows")


def test_an_http_flow_keeps_its_method_headers_and_timeout_and_a_refused_url_shows_at_the_field(
    console: Console,
) -> None:
    page = console.page
    console.go("/flows/new")
    expect(page.get_by_role("heading", name="Register a flow")).to_be_visible()
    page.get_by_label("Name").fill("notify ops")
    page.get_by_label("Kind").select_option("http")
    url = page.get_by_label("URL")
    url.fill("ftp://example.com/hook")  # a URL the browser accepts, the API does not
    page.get_by_label("Method").select_option("PUT")
    page.get_by_label("Request timeout (seconds)").fill("7.5")
    headers = page.get_by_label("Headers (optional)")
    headers.fill("no colon here")
    page.get_by_role("button", name="Register flow").click()
    expect(page.locator(f"#{headers.get_attribute('id')}-error")).to_contain_text("Name: value")
    headers.fill("X-Team: ops\nAuthorization: Bearer s3cret")
    page.get_by_role("button", name="Register flow").click()
    expect(page.locator(f"#{url.get_attribute('id')}-error")).to_contain_text("invalid_url")
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(url).to_be_focused()
    expect(page.locator(".form-error[role=alert]")).to_contain_text("See the field above")
    console.shot("flow-register-http-error")

    url.fill("https://example.com/hooks/ops")
    page.get_by_role("button", name="Register flow").click()
    expect(page.get_by_role("heading", name="notify ops")).to_be_visible()
    facts = page.locator(".facts")
    expect(facts).to_contain_text("PUT https://example.com/hooks/ops")
    expect(facts).to_contain_text("times out after 7.5 s; headers X-Team, Authorization")
    assert "s3cret" not in page.locator("#main").inner_text()  # header values stay unshown
    with console.api() as api:
        settings = api.get(f"/v1/flows/{flow_id_of(page)}").json()["settings"]
    assert settings["method"] == "PUT"
    assert settings["timeout_seconds"] == 7.5
    assert settings["headers"] == {"X-Team": "ops", "Authorization": "Bearer s3cret"}
    assert settings["body"] is None


def test_an_api_trigger_shows_the_exact_curl_command_to_call_it(console: Console) -> None:
    page = console.page
    console.go("/flows")
    page.get_by_role("link", name="greeter").click()
    flow_id = flow_id_of(page)
    page.get_by_role("link", name="New trigger").click()
    expect(page.get_by_role("heading", name="New trigger")).to_be_visible()
    page.get_by_label("Name").fill("public api")
    page.get_by_role("radio", name=re.compile("^API")).check()
    page.get_by_role("button", name="Create trigger").click()
    expect(page.get_by_role("heading", name="public api")).to_be_visible()
    command = page.locator("pre.command")
    expect(command).to_contain_text(f"{console.stack.url}/trigger/{flow_id}")
    expect(command).to_contain_text("Authorization: Bearer")
    copy = page.get_by_role("button", name="Copy command")
    expect(copy).to_be_visible()
    # Over plain http to another host there is no Clipboard API: the console copies another way
    # and the keyboard's focus stays on the button.
    page.evaluate(
        "window.savedClipboard = navigator.clipboard;"
        "Object.defineProperty(navigator, 'clipboard', {value: undefined, configurable: true})"
    )
    try:
        copy.press("Enter")
        expect(page.locator("#toast")).to_have_text("Copied to the clipboard")
        expect(copy).to_be_focused()
    finally:
        page.evaluate(
            "Object.defineProperty(navigator, 'clipboard', "
            "{value: window.savedClipboard, configurable: true})"
        )


def test_a_schedule_previews_its_next_fires_live_and_an_invalid_cron_is_shown_at_the_field(
    console: Console,
) -> None:
    page = console.page
    console.go("/triggers/new")
    expect(page.get_by_role("heading", name="New trigger")).to_be_visible()
    page.get_by_label("Name").fill("every two seconds")
    page.get_by_role("radio", name=re.compile("^Schedule")).check()
    page.get_by_label("Frequency").select_option("daily")
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_label("At (wall clock)").fill("09:30:00")
    preview = page.locator(".preview-list li")
    expect(preview).to_have_count(5)
    expect(preview.first).to_contain_text("09:30:00+0")  # Berlin's wall clock, with its offset
    console.shot("trigger-create-preview")

    page.get_by_label("Frequency").select_option("cron")
    cron = page.get_by_label("Cron expression")
    cron.fill("61 * * * *")
    expect(page.locator(f"#{cron.get_attribute('id')}-error")).to_contain_text("minute field")
    expect(preview).to_have_count(0)
    cron.press("Enter")  # the create's own refusal, next to the field and in the form's alert
    expect(page.locator(".form-error[role=alert]")).to_contain_text("invalid_schedule")
    expect(cron).to_have_attribute("aria-invalid", "true")
    expect(page.locator(f"#{cron.get_attribute('id')}-error")).to_contain_text("invalid_schedule")

    cron.fill("*/2 * * * * *")
    expect(preview).to_have_count(5)
    cron.press("Enter")
    expect(page.get_by_role("heading", name="every two seconds")).to_be_visible()
    expect(page.get_by_role("heading", name="Fire ledger")).to_be_visible()
    # Its fires show up in the ledger with their reasons.
    trigger_id = trigger_id_of(page)
    with console.api() as api:
        poll(
            lambda: api.get(f"/v1/triggers/{trigger_id}/fires").json()["items"],
            lambda items: len(items) >= 2,
        )
    page.reload()
    expect(page.locator("tbody tr .status-started").first).to_be_visible()
    console.shot("trigger-ledger")


def test_a_trigger_is_paused_resumed_and_edited(console: Console) -> None:
    page = console.page
    expect(page.get_by_role("heading", name="every two seconds")).to_be_visible()
    page.get_by_role("button", name="Pause").press("Enter")  # by keyboard: the focus stays
    expect(page.get_by_role("button", name="Resume")).to_be_focused()
    expect(page.locator(".facts .status-paused")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Pause")).to_be_focused()
    expect(page.locator(".facts .status-active")).to_be_visible()

    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit every two seconds")).to_be_visible()
    cron = page.get_by_label("Cron expression")
    expect(cron).to_have_value("*/2 * * * * *")
    page.get_by_label("Name").fill("weekday mornings")
    cron.fill("0 9 * * 1-5")
    expect(page.locator(".preview-list li")).to_have_count(5)
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="weekday mornings")).to_be_visible()
    expect(page.locator(".facts")).to_contain_text("cron 0 9 * * 1-5 (Europe/Berlin)")


def test_run_now_shows_the_result_and_the_run_appears_finished_in_the_list_and_its_page(
    console: Console,
) -> None:
    page = console.page
    console.go("/triggers/new")
    page.get_by_label("Name").fill("by hand")
    page.get_by_role("radio", name=re.compile("^Manual")).check()
    page.get_by_role("button", name="Create trigger").click()
    expect(page.get_by_role("heading", name="by hand")).to_be_visible()
    trigger_id = trigger_id_of(page)
    page.get_by_label("Input (JSON)").fill('{"order": 42}')
    page.get_by_role("button", name="Run now").press("Enter")  # by keyboard
    outcome = page.locator(".outcome")
    expect(outcome.locator(".status-succeeded")).to_be_visible()
    expect(page.get_by_role("button", name="Run now")).to_be_focused()  # the place is kept
    expect(outcome.locator("pre.json")).to_contain_text('"order": 42')
    run_link = outcome.get_by_role("link", name=re.compile(r"^run_"))
    run_id = run_link.inner_text()

    run_link.click()
    expect(page.get_by_role("heading", name=f"Run {run_id}")).to_be_visible()
    expect(page.locator(".facts .status-succeeded")).to_be_visible()
    expect(page.locator(".facts").get_by_role("link", name="by hand")).to_be_visible()
    expect(page.locator("pre.json").first).to_contain_text('"order": 42')
    expect(page.get_by_role("heading", name="Result")).to_be_visible()
    expect(page.locator("pre.json").nth(1)).to_contain_text('"order": 42')  # echo's result
    expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
    expect(page.locator("table .status-succeeded")).to_be_visible()
    console.shot("run")

    console.go(f"/runs?trigger={trigger_id}&status=succeeded")
    expect(page.locator(f"tr[data-run-id='{run_id}'] .status-succeeded")).to_be_visible()
    # A run started elsewhere shows up without reloading (the page polls while visible).
    with console.api() as api:
        started = api.post(f"/v1/triggers/{trigger_id}/run", json={"order": 43})
        assert started.status_code == 200, started.text
    later = started.json()["run_id"]
    expect(page.locator(f"tr[data-run-id='{later}'] .status-succeeded")).to_be_visible()
    expect(page.get_by_label("succeeded")).to_be_checked()
    console.shot("runs")


def test_in_a_narrow_window_the_page_fits_and_the_runs_table_scrolls_sideways(
    console: Console,
) -> None:
    page = console.page
    page.set_viewport_size({"width": 380, "height": 800})
    try:
        console.go("/runs")
        expect(page.locator("tbody tr").first).to_be_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 380
        table = page.locator(".table-wrap")
        assert table.evaluate("wrap => wrap.scrollWidth > wrap.clientWidth")
        expect(page.get_by_role("link", name="Keys")).to_be_in_viewport()
        console.shot("runs-narrow")
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_a_running_run_is_cancelled_from_its_page(console: Console) -> None:
    page = console.page
    with console.api() as api:
        flow = api.post(
            "/v1/flows",
            json={"name": "napper", "settings": {"kind": "python", "function": "sleep"}},
        ).json()
        trigger = api.post("/v1/triggers", json={"flow_id": flow["id"], "type": "manual"}).json()
        started = api.post(
            f"/v1/triggers/{trigger['id']}/run",
            json={"seconds": 60},
            headers={"Prefer": "respond-async"},
        ).json()
    console.go(f"/runs/{started['run_id']}")
    cancel = page.get_by_role("button", name="Cancel run")
    cancel.focus()  # by keyboard: the page is drawn anew every 1.5 s while the run goes on
    page.wait_for_timeout(1_700)
    expect(cancel).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.get_by_role("dialog").get_by_role("button", name="Cancel run").click()
    expect(page.locator(".facts .status-cancelled")).to_be_visible()


def test_deleting_a_trigger_asks_for_confirmation_first(console: Console) -> None:
    page = console.page
    console.go("/triggers")
    page.get_by_role("link", name="public api").click()
    trigger_id = trigger_id_of(page)
    page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete this trigger?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    with console.api() as api:
        assert api.get(f"/v1/triggers/{trigger_id}").status_code == 200
    page.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete trigger").click()
    expect(page.get_by_role("heading", name="greeter")).to_be_visible()
    with console.api() as api:
        assert api.get(f"/v1/triggers/{trigger_id}").status_code == 404


def greeter_id(console: Console) -> str:
    with console.api() as api:
        flows = api.get("/v1/flows", params={"limit": 500}).json()["items"]
    return next(flow["id"] for flow in flows if flow["name"] == "greeter")


def standard_delivery(url: str, secret: str, body: bytes) -> httpx.Response:
    message_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(secret).sign(message_id, datetime.now(UTC), body.decode())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": signature,
    }
    return httpx.post(url, content=body, headers=headers, timeout=10)


def test_a_webhook_trigger_shows_its_secret_once_and_a_signed_delivery_shows_a_run(
    console: Console,
) -> None:
    page = console.page
    console.go(f"/triggers/new?flow={greeter_id(console)}")
    expect(page.get_by_role("heading", name="New trigger")).to_be_visible()
    page.get_by_label("Name").fill("billing hook")
    page.get_by_role("radio", name=re.compile("^Webhook")).check()
    page.get_by_label("Sender (signature scheme)").select_option("standard_webhooks")
    expect(page.get_by_label("Response")).to_have_value("accepted")  # a webhook's default
    expect(page.get_by_label("Signature header")).to_be_hidden()  # only for generic HMAC
    console.shot("trigger-create-webhook")
    page.get_by_role("button", name="Create trigger").click()
    expect(page.get_by_role("heading", name="billing hook")).to_be_visible()
    trigger_id = trigger_id_of(page)

    panel = page.locator(".secret")
    expect(panel).to_contain_text("it will not be shown again")
    expect(panel.get_by_role("button", name="Copy secret")).to_be_visible()
    secret = panel.locator(".secret-value").inner_text()
    assert secret.startswith("whsec_")
    url = f"{console.stack.url}/hooks/{trigger_id}"
    expect(page.locator(".hook-url")).to_have_text(url)
    expect(page.get_by_role("button", name="Copy URL")).to_be_visible()
    expect(page.locator(".facts")).to_contain_text("Standard Webhooks")
    console.shot("trigger-webhook")

    delivered = standard_delivery(url, secret, b'{"type": "invoice.paid", "id": 42}')
    assert delivered.status_code == 202, delivered.text
    run_id = delivered.json()["run_id"]
    forged = standard_delivery(url, "whsec_" + "A" * 43, b'{"type": "invoice.paid"}')
    assert forged.status_code == 401, forged.text
    with console.api() as api:
        poll(
            lambda: api.get(f"/v1/runs?trigger_id={trigger_id}").json()["items"],
            lambda items: any(r["id"] == run_id and r["status"] == "succeeded" for r in items),
        )
        poll(  # refusals are counted in the background
            lambda: api.get(f"/v1/triggers/{trigger_id}/refusals").json()["total"],
            lambda total: total == 1,
        )
    page.reload()
    expect(page.locator(".secret")).to_have_count(0)
    assert secret not in page.content()  # shown once only
    run_row = page.locator(f"tr[data-run-id='{run_id}']")
    expect(run_row.locator(".status-succeeded")).to_be_visible()
    expect(run_row).to_contain_text("webhook")
    expect(run_row.get_by_role("link", name="greeter")).to_be_visible()  # the flow's name
    refusals = page.locator(".refusals")
    expect(refusals).to_contain_text("1 refused in all (1 invalid_signature)")
    expect(refusals.locator("tbody tr")).to_have_count(1)

    # Rotate, ending the old secret now: only the new one (shown once) verifies.
    page.get_by_label("Keep the current secret for").select_option("0")
    page.get_by_role("button", name="Rotate secret").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("stops verifying now")
    dialog.get_by_role("button", name="Rotate secret").click()
    new_secret = page.locator(".secret .secret-value").inner_text()
    assert new_secret.startswith("whsec_")
    assert new_secret != secret
    assert standard_delivery(url, secret, b'{"type": "late"}').status_code == 401
    assert standard_delivery(url, new_secret, b'{"type": "fresh"}').status_code == 202


def test_a_github_webhook_takes_its_secret_and_events_and_a_push_signed_like_github_runs(
    console: Console,
) -> None:
    page = console.page
    console.go(f"/triggers/new?flow={greeter_id(console)}")
    page.get_by_label("Name").fill("repo pushes")
    page.get_by_role("radio", name=re.compile("^Webhook")).check()
    page.get_by_label("Sender (signature scheme)").select_option("github")
    expect(page.get_by_label("Timestamp tolerance (seconds)")).to_be_hidden()  # GitHub has none
    secret = "a-github-secret-of-ours"
    page.get_by_label("Signing secret (optional)").fill(secret)
    page.get_by_label("Accepted events (optional)").fill("push, pull_request")
    page.get_by_role("button", name="Create trigger").click()
    expect(page.get_by_role("heading", name="repo pushes")).to_be_visible()
    expect(page.locator(".secret .secret-value")).to_have_text(secret)
    expect(page.locator(".facts")).to_contain_text("push, pull_request")
    url = page.locator(".hook-url").inner_text()

    def deliver(event: str, signed_with: str = secret) -> httpx.Response:
        body = json.dumps({"ref": "refs/heads/main", "event": event}).encode()
        digest = hmac.new(signed_with.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={digest}",
        }
        return httpx.post(url, content=body, headers=headers, timeout=10)

    ignored = deliver("issues")
    assert ignored.status_code == 200, ignored.text
    assert ignored.json()["ignored"] is True
    pushed = deliver("push")
    assert pushed.status_code == 202, pushed.text

    # Rotate to a secret pasted in (the 24 hours' grace by default): both verify meanwhile.
    page.get_by_label("New secret (optional)").fill("a-second-github-secret")
    page.get_by_role("button", name="Rotate secret").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate secret").click()
    expect(page.locator(".secret .secret-value")).to_have_text("a-second-github-secret")
    expect(page.locator("tbody tr", has_text="previous")).to_have_count(1)
    rotated = deliver("push", signed_with="a-second-github-secret")
    assert rotated.status_code == 202, rotated.text
    assert deliver("push").status_code == 202  # the previous secret, in its grace

    # An edit keeps the scheme and secrets and changes the events.
    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Sender (signature scheme)")).to_be_disabled()
    events = page.get_by_label("Accepted events (optional)")
    expect(events).to_have_value("push, pull_request")
    events.fill("push")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator(".facts dt:text-is('Events') + dd")).to_have_text("push")

    console.go(f"/runs?trigger={trigger_id_of_url(url)}")
    expect(page.locator(f"tr[data-run-id='{pushed.json()['run_id']}']")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(3)  # the ignored event started nothing


def trigger_id_of_url(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_lists_name_the_flows_asking_once_per_flow_not_once_per_row(console: Console) -> None:
    page = console.page
    asked: list[str] = []

    def note(request: Request) -> None:
        if re.search(r"/v1/flows/flw_\w+$", request.url):
            asked.append(request.url)

    page.on("request", note)
    try:
        console.go("/runs")
        expect(page.locator("tbody tr").first).to_be_visible()
        greeter = greeter_id(console)
        assert page.locator(f"tbody a[title='{greeter}']", has_text="greeter").count() >= 3
        flows_shown = set(re.findall(r"flw_\w+", page.locator("tbody").inner_text()))
        assert len(asked) == len(set(asked)) == len(flows_shown), asked
    finally:
        page.remove_listener("request", note)
    console.go("/triggers")
    expect(page.locator("tbody tr", has_text="billing hook")).to_contain_text("greeter")
    expect(page.locator("tbody tr", has_text="billing hook")).to_contain_text("Standard Webhooks")


def test_the_trigger_form_offers_every_flow_following_the_list_s_cursor_pages(
    console: Console,
) -> None:
    page = console.page
    with console.api() as api:
        for name in ("picker-a", "picker-b", "picker-c"):
            assert api.post(
                "/v1/flows", json={"name": name, "settings": {"kind": "python", "function": "echo"}}
            ).is_success
        every = [flow["id"] for flow in api.get("/v1/flows", params={"limit": 500}).json()["items"]]
    pages: list[str] = []

    def small_pages(route: Route) -> None:  # pages of 2 flows, as if there were thousands
        pages.append(route.request.url)
        route.continue_(url=re.sub(r"limit=\d+", "limit=2", route.request.url))

    page.route(re.compile(r"/v1/flows\?"), small_pages)
    try:
        console.go("/triggers/new")
        flow = page.get_by_label("Flow", exact=True)
        expect(flow.locator("option")).to_have_count(len(every))
        assert len(pages) >= len(every) // 2  # every page was asked for
        flow.select_option(every[-1])  # the last flow, on the last page
        expect(flow.locator("option:checked")).to_contain_text("picker-c")
    finally:
        page.unroute(re.compile(r"/v1/flows\?"), small_pages)


def test_a_key_s_secret_is_shown_once_and_a_revoked_key_stops_working(console: Console) -> None:
    page = console.page
    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_label("Name").fill("producer")
    page.get_by_label("Name").press("Enter")
    panel = page.locator(".secret")
    expect(panel).to_contain_text("it will not be shown again")
    secret = panel.locator(".secret-value").inner_text()
    assert secret.startswith("tpk_")
    expect(panel.get_by_role("button", name="Copy secret")).to_be_visible()
    row = page.locator("tr", has_text="producer")
    expect(row).to_contain_text(secret[:8])
    console.shot("keys")
    with console.stack.client(secret) as producer:
        assert producer.get("/v1/runs/run_0").status_code != 401
    page.reload()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    assert secret not in page.content()  # shown once only

    page.locator("tr", has_text="producer").get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke key").click()
    expect(page.locator("tr", has_text="producer")).to_have_count(0)
    with console.stack.client(secret) as producer:
        assert producer.get("/v1/runs/run_0").status_code == 401


def test_a_key_the_api_refuses_sends_the_operator_back_to_sign_in_with_its_message(
    console: Console,
) -> None:
    page = console.page
    page.evaluate(
        "key => sessionStorage.setItem(Object.keys(sessionStorage)[0], key)",
        "tpk_" + "x" * 40,
    )
    console.go("/runs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#main .field-error")).not_to_be_empty()
    assert page.evaluate("() => sessionStorage.length") == 0
    page.get_by_label("Workspace admin key").fill(console.admin_key)
    page.get_by_label("Workspace admin key").press("Enter")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()  # back where it was
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_a_page_opened_signed_out_is_the_one_shown_once_signed_in(console: Console) -> None:
    # A new tab has no key: a bookmarked filter must survive the sign-in it leads to.
    page = console.page
    console.go("/runs?status=failed")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Workspace admin key").fill(console.admin_key)
    page.get_by_label("Workspace admin key").press("Enter")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_label("failed", exact=True)).to_be_checked()
    assert page.url.endswith("#/runs?status=failed")


def test_a_run_filter_the_api_refuses_is_shown_under_its_field(console: Console) -> None:
    page = console.page
    console.go("/runs?source=api&since=yesterday")  # a hand-edited address
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    since = page.get_by_label("Since")
    expect(since).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field", has=since).locator(".field-error")).to_contain_text(
        "`since` 'yesterday' is not a time"
    )
    expect(page.get_by_text("No runs match.")).to_be_hidden()
    expect(page.get_by_label("Source")).to_have_value("api")


def test_the_run_list_pages_by_keyboard_and_keeps_the_focus_when_the_last_page_is_in(
    console: Console,
) -> None:
    page = console.page
    with console.api() as api:
        every = [run["id"] for run in api.get("/v1/runs", params={"limit": 500}).json()["items"]]
    assert len(every) > 4

    def small_pages(route: Route) -> None:  # pages of 2 runs, as if there were thousands
        route.continue_(url=re.sub(r"limit=\d+", "limit=2", route.request.url))

    page.route(re.compile(r"/v1/runs\?"), small_pages)
    try:
        console.go("/runs")
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(2)
        more = page.get_by_role("button", name="Load more")
        more.focus()
        for _ in range(len(every)):
            if not more.is_visible():
                break
            shown = rows.count()
            page.keyboard.press("Enter")
            expect(rows).not_to_have_count(shown)
        expect(more).to_be_hidden()
        assert rows.evaluate_all("rows => rows.map(row => row.dataset.runId)") == every
        assert page.evaluate("document.activeElement.closest('tbody tr')?.dataset.runId")
    finally:
        page.unroute(re.compile(r"/v1/runs\?"), small_pages)

    page.route(re.compile(r"/v1/flows\?"), small_pages)  # the other lists page alike
    try:
        console.go("/flows")
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(2)
        page.get_by_role("button", name="Load more").press("Enter")
        expect(rows).to_have_count(4)
        expect(page.get_by_role("button", name="Load more")).to_be_focused()
    finally:
        page.unroute(re.compile(r"/v1/flows\?"), small_pages)


def test_more_new_runs_than_a_page_between_two_refreshes_leave_no_hole_in_the_list(
    console: Console,
) -> None:
    page = console.page

    def small_pages(route: Route) -> None:  # pages of 2 runs: 3 new runs are more than a page
        route.continue_(url=re.sub(r"limit=\d+", "limit=2", route.request.url))

    page.route(re.compile(r"/v1/runs\?"), small_pages)
    try:
        console.go("/runs")
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(2)
        first_id = rows.first.get_attribute("data-run-id")
        on_a_run = page.locator(f"tr[data-run-id='{first_id}']").get_by_role("link").first
        on_a_run.focus()  # the keyboard is on a row the refreshes draw anew
        with console.api() as api:
            manual = next(
                t["id"] for t in api.get("/v1/triggers").json()["items"] if t["type"] == "manual"
            )
            started = {api.post(f"/v1/triggers/{manual}/run").json()["run_id"] for _ in range(3)}

            expected: list[str] = poll(  # once the run history has the three
                lambda: [r["id"] for r in api.get("/v1/runs", params={"limit": 5}).json()["items"]],
                lambda ids: started <= set(ids[:3]),
            )
        expect(page.locator(f"tr[data-run-id='{expected[0]}']")).to_be_visible()
        expect(rows).to_have_count(5)
        expect(on_a_run).to_be_focused()
        assert rows.evaluate_all("rows => rows.map(row => row.dataset.runId)") == expected
    finally:
        page.unroute(re.compile(r"/v1/runs\?"), small_pages)


def test_the_console_ran_without_a_script_error_or_a_policy_violation(console: Console) -> None:
    # 401/4xx answers the console handled are logged by Chromium as failed loads: not errors.
    unexpected = [e for e in console.errors if "Failed to load resource" not in e]
    assert unexpected == [], json.dumps(unexpected, indent=1)
