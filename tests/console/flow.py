#!/usr/bin/env python3
"""The web console end to end, in a real browser.

Drives Debian's Chromium (/usr/bin/chromium, headless) with Playwright's sync
API against a running receiver's console (`lifeline-receiver serve
--console-listen ADDR`), over HTTPS that the browser trusts: the receiver's
own CA (STORE/tls/ca.crt) is imported into a private NSS database that only
this browser reads (no certificate error is ignored).

    python3 tests/console/flow.py --url https://127.0.0.1:7443 --store STORE \
        --machine-a acme-web1 --machine-b beta-db1 \
        --receiver-bin target/debug/lifeline-receiver --screenshots docs/console

The store must be fresh: its first admin's password is read from
STORE/console-first-login. The two machines must be registered
(`lifeline-receiver machine add`); the flow gives them to its customers with
`lifeline-receiver customer give` (--receiver-bin).

The flow is a list of named steps (STEPS at the end), run in order on one
shared `Flow`; each asserts what it expects and raises `Failed` saying what
was wrong. A failing step stops the run with exit status 1, after saving a
screenshot of every open page into --artifacts (if given).
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import os
import shutil
import socketserver
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# What Chromium needs on these machines (no sandbox as root, no GPU, and no
# background connections: the network outside is closed and refuses them).
# Playwright's launch() adds --headless and a fresh --user-data-dir itself.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Every wait is for a condition; this bounds each one.
TIMEOUT_MS = 10_000

# Who the flow makes. Passwords are at least 12 characters (the console's
# minimum).
ADMIN_PASSWORD = "provider-admin-passphrase-1"
CUSTOMER_A = {"name": "Acme Ltd", "email": "it@acme.example", "login": "acme-admin", "password": "acme-first-password"}
CUSTOMER_B = {"name": "Beta GmbH", "email": "ops@beta.example", "login": "beta-admin", "password": "beta-first-password"}
# A customer whose admin the lockout step locks out (the others go on).
CUSTOMER_L = {"name": "Locked Co", "email": "", "login": "locked-admin", "password": "locked-first-password"}
# A customer whose name is markup: pages must show it as text.
CUSTOMER_X = {
    "name": '<img src=x onerror="document.title=1">Evil & Co',
    "email": "",
    "login": "evil-admin",
    "password": "evil-first-password",
}

# A customer who signs up on its own (the receiver runs with
# --console-signup), registers a PC and gets its boot media.
CUSTOMER_C = {"name": "Gamma Home", "email": "me@gamma.example", "login": "gamma", "password": "gamma-first-password"}
PC = {"name": "gamma-pc1", "ip": "192.0.2.10", "mac": "52:54:00:12:34:56"}
# Making a boot OS and its ISO takes seconds to tens of seconds.
MEDIA_TIMEOUT_MS = 180_000

LOCKOUT_AFTER = 5  # lifeline_store::db::console::LOCKOUT_AFTER


class SmtpSink:
    """A mail server on loopback that keeps what it is sent (the receiver
    mails its notices to it, --smtp-url smtp://127.0.0.1:PORT): just the
    SMTP a client needs to hand over a message, nothing relayed."""

    def __init__(self, port):
        self.messages = []
        sink = self

        class Session(socketserver.StreamRequestHandler):
            def handle(self):
                def say(line):
                    self.wfile.write(line.encode() + b"\r\n")

                say("220 sink ESMTP")
                rcpt = []
                while line := self.rfile.readline():
                    verb = line.decode("latin-1").strip().split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        say("250 sink")
                    elif verb == "RCPT":
                        rcpt.append(line.decode("latin-1").split(":", 1)[1].strip().strip("<>"))
                        say("250 ok")
                    elif verb == "DATA":
                        say("354 go on")
                        body = []
                        while (l := self.rfile.readline()) not in (b".\r\n", b""):
                            body.append(l.decode("utf-8", "replace"))
                        sink.messages.append({"to": rcpt, "text": "".join(body)})
                        rcpt = []
                        say("250 kept")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:
                        say("250 ok")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Session)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, to, text, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.messages:
                if to in m["to"] and text in m["text"]:
                    return m
            time.sleep(0.1)
        raise Failed(f"no mail to {to} saying {text!r} within {seconds} s; the sink has {self.messages}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Failed(Exception):
    """A step's expectation that did not hold."""


def check(cond, message):
    if not cond:
        raise Failed(message)


def totp_code(key_b32, step):
    """RFC 6238 (SHA-1, 6 digits) for a 30 s time step: what an
    authenticator app shows."""
    key_b32 = "".join(key_b32.split()).upper()
    key = base64.b32decode(key_b32 + "=" * (-len(key_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[off : off + 4])[0] & 0x7FFFFFFF) % 1_000_000)


class Totp:
    """An authenticator app that never shows a code twice: the console
    accepts a code for its step and the steps either side, once, and only a
    step later than the last one used; each code here is the next step after
    the last, within that window."""

    def __init__(self, key):
        self.key = key
        self.last = None

    def next_code(self):
        # A code typed just before a step ends may reach the server after
        # (the first is for the step before, the oldest accepted): wait out
        # the last seconds of a step (a condition on the clock).
        while 30 - time.time() % 30 < 4:
            time.sleep(0.2)
        now = int(time.time()) // 30
        step = now - 1 if self.last is None else max(self.last + 1, now - 1)
        check(step <= now + 1, f"the flow used second-factor codes faster than one a step (step {step}, now {now})")
        self.last = step
        return totp_code(self.key, step)

    def last_code(self):
        return totp_code(self.key, self.last)


class AttackerSite:
    """A page on another origin that posts a form to the console as soon as
    it loads: what a malicious site a signed-in user visits would do.

    Plain: http://localhost:PORT, another site (host and scheme differ), to
    which the browser sends no SameSite=Strict cookie. With `tls` (a
    certificate and key the browser trusts for 127.0.0.1):
    https://127.0.0.1:PORT, another origin of the *same site* (only the port
    differs), with which the browser does send the session cookie: only the
    console's own check of where a change comes from stops that one."""

    def __init__(self, tls=None):
        self.page_html = b""
        self.tls = tls
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.page_html)))
                self.end_headers()
                self.wfile.write(site.page_html)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        port = self.server.server_address[1]
        return f"https://127.0.0.1:{port}/" if self.tls else f"http://localhost:{port}/"

    def auto_post(self, action, fields):
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        self.page_html = (
            f'<!doctype html><html><body><form id="f" method="post" action="{action}">{inputs}</form>'
            '<script>document.getElementById("f").submit()</script></body></html>'
        ).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Flow:
    """What the steps share: the browser, the console's address, and what
    earlier steps made (passwords, ids, tokens)."""

    def __init__(self, pw, args, browser_home):
        self.pw = pw
        self.url = args.url.rstrip("/")
        self.store = Path(args.store)
        self.shots = Path(args.screenshots)
        self.artifacts = Path(args.artifacts) if args.artifacts else None
        self.machine_a = args.machine_a
        self.machine_b = args.machine_b
        self.receiver_bin = args.receiver_bin
        self.smtp = SmtpSink(args.smtp_port)
        self.browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            # Chromium reads trusted CAs from $HOME/.pki/nssdb: a HOME of
            # its own holds one with the receiver's CA in it.
            env={**os.environ, "HOME": str(browser_home)},
        )
        self.contexts = []
        # What the console's pages said in the browser's console (script
        # errors, CSP violations), and dialogs they opened.
        self.browser_errors = []
        self.admin_password = None
        self.totp_a = None
        self.machine_a_id = None
        self.customer_a_id = None
        self.token_a = None
        self.token_b = None

    # --- helpers -------------------------------------------------------

    def context(self, viewport=WIDE):
        """A new browser context: its own cookies, as another browser."""
        ctx = self.browser.new_context(viewport=viewport)
        ctx.set_default_timeout(TIMEOUT_MS)
        ctx.on("page", self.watch)
        self.contexts.append(ctx)
        return ctx

    def page(self, viewport=WIDE):
        return self.context(viewport).new_page()

    def watch(self, page):
        def console(msg):
            # An answer's status (the 401s, 403s and 404s the flow asks
            # for) is logged as "Failed to load resource": not the page's.
            if msg.type == "error" and "Failed to load resource" not in msg.text and page.url.startswith(self.url):
                self.browser_errors.append(f"{page.url}: console: {msg.text}")

        page.on("console", console)
        page.on("pageerror", lambda e: self.browser_errors.append(f"{page.url}: script error: {e}"))

        def dialog(d):
            self.browser_errors.append(f"{page.url}: a {d.type} dialog opened: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)

    def goto(self, page, path, status=200):
        r = page.goto(self.url + path)
        check(r is not None, f"GET {path}: no response")
        check(r.status == status, f"GET {path}: status {r.status}, expected {status}; page says: {text_of(page)}")
        return r

    def submit(self, page, button, path):
        """Clicks `button` and returns the answer to the POST it makes to
        `path` (before any redirect is followed), once the page that follows
        has loaded."""
        with page.expect_response(lambda r: r.request.method == "POST" and r.url == self.url + path) as answer:
            page.locator(button).click()
        page.wait_for_load_state()
        return answer.value

    def sign_in(self, page, login, password):
        """Fills and submits the sign-in form; the POST's answer."""
        self.goto(page, "/login")
        page.fill("#login", login)
        page.fill("#password", password)
        return self.submit(page, "form[action='/login'] button[type=submit]", "/login")

    def sign_in_ok(self, page, login, password, totp=None):
        """Signs in (with a second-factor code from `totp` when asked) and
        checks that the console shows `login` as signed in."""
        r = self.sign_in(page, login, password)
        check(r.status == 303, f"sign-in of {login}: status {r.status}; page says: {text_of(page)}")
        if totp is not None:
            page.wait_for_url("**/login/second-factor")
            page.fill("#code", totp.next_code())
            r = self.submit(page, "form[action='/login/second-factor'] button[type=submit]", "/login/second-factor")
            check(r.status == 303, f"second factor of {login}: status {r.status}; page says: {text_of(page)}")
        page.wait_for_url("**/machines")
        expect(page.locator("header .who")).to_contain_text(login)

    def sign_out(self, page):
        self.submit(page, "form.signout button[type=submit]", "/logout")
        page.wait_for_url("**/login")
        # Signed out for real: a page now sends back to the sign-in form.
        page.goto(self.url + "/machines")
        page.wait_for_url("**/login")

    def api(self, token):
        """An HTTP client (Playwright's, outside the browser) sending
        `token`; it trusts the receiver's CA through NODE_EXTRA_CA_CERTS."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.pw.request.new_context(base_url=self.url, extra_http_headers=headers)

    def api_json(self, token, path, status=200):
        ctx = self.api(token)
        try:
            r = ctx.get(path, max_redirects=0)
            check(r.status == status, f"GET {path} with a token: status {r.status}, expected {status}: {r.text()[:300]}")
            return r.json()
        finally:
            ctx.dispose()

    def audit_events(self, token, q):
        return self.api_json(token, f"/api/v1/audit?q={q}")["items"]

    def make_token(self, page, name):
        self.goto(page, "/account")
        page.fill("#token-name", name)
        r = self.submit(page, "form[action='/account/tokens'] button[type=submit]", "/account/tokens")
        check(r.status == 200, f"making an API token: status {r.status}; page says: {text_of(page)}")
        token = page.locator("#new-token").inner_text().strip()
        check(token.startswith("llt_") and len(token) > 20, f"#new-token holds no API token: {token!r}")
        return token

    def screenshot(self, page, name):
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        check(path.stat().st_size > 1000, f"screenshot {path} is empty")

    def save_failure_artifacts(self):
        if not self.artifacts:
            return
        self.artifacts.mkdir(parents=True, exist_ok=True)
        n = 0
        for ctx in self.contexts:
            for page in ctx.pages:
                n += 1
                path = self.artifacts / f"failure-page-{n}.png"
                try:
                    page.screenshot(path=str(path), full_page=True)
                    print(f"  page {n} ({page.url}) saved to {path}")
                except PlaywrightError as e:
                    print(f"  page {n} ({page.url}): no screenshot ({e})")

    def close(self):
        for ctx in self.contexts:
            ctx.close()
        self.browser.close()
        self.smtp.close()


def text_of(page):
    try:
        return " ".join(page.locator("main").inner_text(timeout=2000).split())[:400]
    except PlaywrightError:
        return "(no main element)"


# --- steps ------------------------------------------------------------


def first_admin_signs_in_and_changes_password(f):
    first = f.store / "console-first-login"
    check(first.exists(), f"{first} does not exist: the receiver made no first admin")
    lines = dict(line.split(": ", 1) for line in first.read_text().splitlines() if ": " in line)
    check(lines.get("login") == "admin", f"{first} names login {lines.get('login')!r}, not admin")
    page = f.page()
    f.sign_in_ok(page, "admin", lines["password"])
    # The same admin in another browser: its session ends with the change.
    other = f.page()
    f.sign_in_ok(other, "admin", lines["password"])
    f.goto(page, "/account")
    page.fill("#current", lines["password"])
    page.fill("#new", ADMIN_PASSWORD)
    page.fill("#again", ADMIN_PASSWORD)
    r = f.submit(page, "form[action='/account/password'] button[type=submit]", "/account/password")
    check(r.status == 200, f"changing the password: status {r.status}; page says: {text_of(page)}")
    expect(page.locator(".flash")).to_contain_text("Password changed")
    check(not first.exists(), f"{first} still holds the first password after it was changed")
    f.admin_password = ADMIN_PASSWORD
    other.goto(f.url + "/machines")
    check(other.url.endswith("/login"), f"another session of admin lived on after the password change: {other.url}")
    # Signing out ends the session on the server: its cookie, put back,
    # opens nothing.
    cookies = page.context.cookies()
    session = [c for c in cookies if c["name"] == "ll_session"]
    check(session, f"no session cookie: {cookies}")
    # Scripts cannot read it, it goes over TLS only, and no other site's
    # request carries it.
    c = session[0]
    check(c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict", f"the session cookie is not HttpOnly, Secure, SameSite=Strict: {c}")
    f.sign_out(page)
    page.context.add_cookies([c for c in cookies if c["name"] == "ll_session"])
    page.goto(f.url + "/machines")
    check(page.url.endswith("/login"), f"the session cookie still opened {page.url} after signing out")
    # The old password is refused, the new one works.
    r = f.sign_in(page, "admin", lines["password"])
    check(r.status == 401, f"the first admin's old password: status {r.status}, expected 401")
    expect(page.locator(".problem")).to_contain_text("Wrong login or password")
    f.sign_in_ok(page, "admin", ADMIN_PASSWORD)
    f.admin = page


def admin_adds_customers(f):
    page = f.admin
    f.goto(page, "/customers")
    for c in (CUSTOMER_A, CUSTOMER_B, CUSTOMER_L):
        add_customer(f, page, c)
    rows = page.locator("main table tbody tr").all_inner_texts()
    for c in (CUSTOMER_A, CUSTOMER_B, CUSTOMER_L):
        check(any(c["name"] in r for r in rows), f"/customers does not list {c['name']}: {rows}")
    # A name taken twice is refused, saying why, and nothing is added.
    page.fill("#name", CUSTOMER_A["name"])
    page.fill("#admin_login", "acme-second-admin")
    page.fill("#admin_password", "another-long-password")
    r = f.submit(page, "form[action='/customers'] button[type=submit]", "/customers")
    check(r.status == 400, f"adding {CUSTOMER_A['name']} twice: status {r.status}, expected 400")
    expect(page.locator(".problem")).to_be_visible()
    rows = page.locator("main table tbody tr").all_inner_texts()
    check(sum(CUSTOMER_A["name"] in r for r in rows) == 1, f"{CUSTOMER_A['name']} is listed twice: {rows}")


def add_customer(f, page, c):
    page.fill("#name", c["name"])
    page.fill("#email", c["email"])
    page.fill("#admin_login", c["login"])
    page.fill("#admin_password", c["password"])
    r = f.submit(page, "form[action='/customers'] button[type=submit]", "/customers")
    check(r.status == 200, f"adding customer {c['name']}: status {r.status}; page says: {text_of(page)}")
    expect(page.locator(".flash")).to_contain_text(f"Customer {c['name']} added")


def machines_go_to_customers(f):
    for machine, c in ((f.machine_a, CUSTOMER_A), (f.machine_b, CUSTOMER_B)):
        give = [f.receiver_bin, "--store", str(f.store), "customer", "give", machine, "--customer", c["name"]]
        out = subprocess.run(give, capture_output=True, text=True)
        check(out.returncode == 0, f"giving {machine} to {c['name']} failed: {out.stdout}{out.stderr}")
    page = f.admin
    f.goto(page, "/machines")
    rows = page.locator("#list tbody tr").all_inner_texts()
    for machine, c in ((f.machine_a, CUSTOMER_A), (f.machine_b, CUSTOMER_B)):
        check(any(machine in r and c["name"] in r for r in rows), f"/machines shows no {machine} of {c['name']}: {rows}")
    # The search box asks htmx for the list alone and swaps it in place.
    page.fill("#q", f.machine_b)
    expect(page.locator("#list")).not_to_contain_text(f.machine_a)
    expect(page.locator("#list")).to_contain_text(f.machine_b)
    check("q=" in page.url, f"the search did not go into the address bar: {page.url}")
    page.fill("#q", "")
    expect(page.locator("#list")).to_contain_text(f.machine_a)
    # Pages of the list: the "Next" link goes on where the first page ended.
    f.goto(page, "/machines?limit=2")
    first = page.locator("#list tbody tr td:first-child").all_inner_texts()
    check(len(first) == 2, f"/machines?limit=2 shows {first}")
    expect(page.locator(".pager")).to_contain_text("1–2 of 3")
    with page.expect_navigation() as nav:
        page.get_by_role("link", name="Next").click()
    check(nav.value.status == 200, f"the Next link ({page.url}): status {nav.value.status}: {text_of(page)}")
    rest = page.locator("#list tbody tr td:first-child").all_inner_texts()
    check(len(rest) == 1 and rest[0] not in first, f"the next page ({page.url}) after {first} shows {rest}: {text_of(page)}")
    f.goto(page, "/machines")
    with page.expect_navigation():
        page.get_by_role("link", name=f.machine_a, exact=True).click()
    check("/machines/" in page.url, f"the machine's link led to {page.url}")
    f.machine_a_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1")).to_have_text(f.machine_a)
    expect(page.locator(".facts")).to_contain_text(CUSTOMER_A["name"])


def customer_a_sets_up_a_second_factor(f):
    page = f.page()
    f.sign_in_ok(page, CUSTOMER_A["login"], CUSTOMER_A["password"])
    # A customer's admin sees its own machine only.
    rows = page.locator("#list tbody tr").all_inner_texts()
    check(any(f.machine_a in r for r in rows), f"{CUSTOMER_A['login']} does not see {f.machine_a}: {rows}")
    check(not any(f.machine_b in r for r in rows), f"{CUSTOMER_A['login']} sees B's {f.machine_b}: {rows}")
    f.goto(page, "/account")
    expect(page.locator(".facts")).to_contain_text(CUSTOMER_A["name"])
    f.submit(page, "form[action='/account/second-factor/start'] button[type=submit]", "/account/second-factor/start")
    key = page.locator("#totp-key").inner_text().strip()
    check(len(key) >= 16, f"#totp-key holds no base32 key: {key!r}")
    expect(page.locator(".qr svg")).to_be_visible()
    f.totp_a = Totp(key)
    page.fill("#code", f.totp_a.next_code())
    r = f.submit(page, "form[action='/account/second-factor'] button[type=submit]", "/account/second-factor")
    check(r.status == 200, f"confirming the second factor: status {r.status}; page says: {text_of(page)}")
    expect(page.locator(".flash")).to_contain_text("Second factor on")
    f.sign_out(page)

    # The password alone now leads to the second factor's form, not in.
    r = f.sign_in(page, CUSTOMER_A["login"], CUSTOMER_A["password"])
    check(r.status == 303, f"sign-in with a second factor: status {r.status}")
    page.wait_for_url("**/login/second-factor")
    f.goto(page, "/machines")
    check(page.url.endswith("/login"), f"a password alone reached {page.url}")
    r = page.request.get(f.url + "/api/v1/me", max_redirects=0)
    check(r.status == 401, f"/api/v1/me with a password-only session: status {r.status}, expected 401")
    f.sign_in_ok(page, CUSTOMER_A["login"], CUSTOMER_A["password"], totp=f.totp_a)
    f.sign_out(page)

    # The code just used is refused when given again.
    f.sign_in(page, CUSTOMER_A["login"], CUSTOMER_A["password"])
    page.wait_for_url("**/login/second-factor")
    page.fill("#code", f.totp_a.last_code())
    r = f.submit(page, "form[action='/login/second-factor'] button[type=submit]", "/login/second-factor")
    check(r.status == 401, f"a reused second-factor code: status {r.status}, expected 401")
    expect(page.locator(".problem")).to_contain_text("Wrong or used code")
    # ... and the next one lets the user in.
    page.fill("#code", f.totp_a.next_code())
    r = f.submit(page, "form[action='/login/second-factor'] button[type=submit]", "/login/second-factor")
    check(r.status == 303, f"the next second-factor code: status {r.status}; page says: {text_of(page)}")
    page.wait_for_url("**/machines")
    f.customer_a = page


def customer_a_makes_an_api_token(f):
    f.token_a = f.make_token(f.customer_a, "flow A read")
    me = f.api_json(f.token_a, "/api/v1/me")
    check(me["login"] == CUSTOMER_A["login"], f"/api/v1/me with A's token: {me}")
    check(me["customer"] and me["customer"]["name"] == CUSTOMER_A["name"], f"/api/v1/me: customer {me['customer']}")
    check(me["second_factor"] is True, f"/api/v1/me says the second factor is off: {me}")
    f.customer_a_id = me["customer"]["id"]
    names = [m["name"] for m in f.api_json(f.token_a, "/api/v1/machines")["items"]]
    check(names == [f.machine_a], f"/api/v1/machines with A's token lists {names}, expected [{f.machine_a}]")
    # The token made is read-only: it cannot add a customer (nor could A).
    ctx = f.api(f.token_a)
    try:
        r = ctx.post("/api/v1/customers", data={"name": "x", "admin_login": "x", "admin_password": "x" * 12})
        check(r.status == 403, f"POST /api/v1/customers with A's read token: status {r.status}, expected 403")
    finally:
        ctx.dispose()
    f.api_json(None, "/api/v1/me", status=401)


def customer_b_cannot_reach_customer_a(f):
    page = f.page()
    f.sign_in_ok(page, CUSTOMER_B["login"], CUSTOMER_B["password"])
    rows = page.locator("#list tbody tr").all_inner_texts()
    check(any(f.machine_b in r for r in rows), f"{CUSTOMER_B['login']} does not see {f.machine_b}: {rows}")
    check(not any(f.machine_a in r for r in rows), f"{CUSTOMER_B['login']} sees A's {f.machine_a}: {rows}")
    # Guessing A's machine's address: the same answer as for no machine.
    f.goto(page, f"/machines/{f.machine_a_id}", status=404)
    check(f.machine_a not in page.content(), f"the 404 for A's machine names it")
    f.goto(page, "/machines/000000000000000000000000", status=404)
    f.goto(page, f"/customers/{f.customer_a_id}", status=404)
    f.goto(page, "/customers")
    check(CUSTOMER_A["name"] not in text_of(page), f"B's /customers shows {CUSTOMER_A['name']}: {text_of(page)}")
    # B's audit trail holds nothing of A's (A's sign-ins, second factor,
    # token are there for the provider).
    f.goto(page, "/audit")
    for secret in (CUSTOMER_A["login"], CUSTOMER_A["name"], f.machine_a):
        check(secret not in text_of(page), f"B's audit trail shows {secret!r}: {text_of(page)}")

    # B's own session and CSRF token, on a provider admin's form: refused.
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    r = page.request.post(
        f.url + "/customers",
        form={"csrf": csrf, "name": "Made by B", "admin_login": "b-made", "admin_password": "b-made-password-1"},
        max_redirects=0,
    )
    check(r.status == 403, f"B adding a customer: status {r.status}, expected 403")
    f.goto(f.admin, "/customers")
    check("Made by B" not in text_of(f.admin), "B, a customer's admin, added a customer")

    f.token_b = f.make_token(page, "flow B read")
    names = [m["name"] for m in f.api_json(f.token_b, "/api/v1/machines")["items"]]
    check(f.machine_a not in names and f.machine_b in names, f"/api/v1/machines with B's token lists {names}")
    found = f.api_json(f.token_b, f"/api/v1/machines?q={f.machine_a}")
    check(found["total"] == 0, f"B's search for {f.machine_a} found {found}")
    f.api_json(f.token_b, f"/api/v1/machines/{f.machine_a_id}", status=404)
    f.api_json(f.token_b, f"/api/v1/customers/{f.customer_a_id}", status=404)
    customers = [c["id"] for c in f.api_json(f.token_b, "/api/v1/customers")["items"]]
    check(f.customer_a_id not in customers, f"/api/v1/customers with B's token lists A's id: {customers}")
    events = f.api_json(f.token_b, "/api/v1/audit?limit=200")["items"]
    check(events, "B's audit trail is empty: it should hold B's own sign-ins")
    theirs = [e for e in events if CUSTOMER_A["login"] in str(e) or f.machine_a in str(e)]
    check(not theirs, f"B's audit trail (API) holds A's events: {theirs}")
    f.customer_b = page


def audit_trail_pages_back(f):
    # The API's window: each page older than the one before, none skipped.
    first = f.api_json(f.token_a, "/api/v1/audit?limit=3")
    check(len(first["items"]) == 3 and first["next_before"], f"A's audit trail has fewer than 4 entries: {first}")
    second = f.api_json(f.token_a, f"/api/v1/audit?limit=3&before={first['next_before']}")
    ids = [e["id"] for e in first["items"] + second["items"]]
    check(ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), f"audit pages overlap or go forward: {ids}")
    everything = [e["id"] for e in f.api_json(f.token_a, "/api/v1/audit?limit=200")["items"]]
    check(everything[: len(ids)] == ids, f"audit pages skip entries: {ids} vs {everything[: len(ids)]}")
    # The page's "Older" link goes on from the last entry shown.
    page = f.customer_a
    f.goto(page, "/audit?limit=3")
    rows = page.locator("main table tbody tr").all_inner_texts()
    check(len(rows) == 3, f"/audit?limit=3 shows {len(rows)} entries")
    with page.expect_navigation():
        page.get_by_role("link", name="Older").click()
    older = page.locator("main table tbody tr").first.inner_text()
    want = f.api_json(f.token_a, "/api/v1/audit?limit=200")["items"][3]
    check(want["at"] in older and want["event"] in older, f"the 'Older' page starts with {older!r}, expected {want}")
    expect(page.get_by_role("link", name="Newest")).to_be_visible()


def wrong_passwords_lock_the_account(f):
    page = f.page()
    login = CUSTOMER_L["login"]
    for i in range(1, LOCKOUT_AFTER + 1):
        r = f.sign_in(page, login, f"wrong-password-{i}")
        if i < LOCKOUT_AFTER:
            check(r.status == 401, f"wrong password {i}: status {r.status}, expected 401")
            expect(page.locator(".problem")).to_contain_text("Wrong login or password")
        else:
            check(r.status == 429, f"wrong password {i} (the last allowed): status {r.status}, expected 429")
    # The right password is refused now, saying the account is locked.
    r = f.sign_in(page, login, CUSTOMER_L["password"])
    check(r.status == 429, f"the right password of a locked account: status {r.status}, expected 429")
    expect(page.locator(".problem")).to_contain_text("locked")
    check("/login" in page.url, f"a locked account got to {page.url}")
    # The provider sees the lock in the audit trail. (Its search does not
    # look at the "By" column: search the event.)
    f.goto(f.admin, "/audit?q=account+locked")
    rows = f.admin.locator("main table tbody tr").all_inner_texts()
    check(any(login in r for r in rows), f"the audit trail shows no lock of {login}: {rows}")


def changes_from_another_site_are_refused(f):
    page = f.customer_a
    f.goto(page, "/account")
    csrf = page.locator("form[action='/account/tokens'] input[name=csrf]").get_attribute("value")
    check(csrf, "the token form carries no csrf field")

    # Another site's page posts the form while A is signed in, even with
    # the right CSRF token (as if it had leaked): no token is made.
    tls = (f.store / "tls" / "receiver.crt", f.store / "tls" / "receiver.key")
    for name, site, refused in (
        # The cookie stays home: the console sees no session.
        ("another-site", AttackerSite(), (303,)),
        # The cookie comes along: the console must refuse the change.
        ("same-site-other-origin", AttackerSite(tls=tls), (403,)),
    ):
        try:
            site.auto_post(f.url + "/account/tokens", {"csrf": csrf, "name": f"made-by-{name}"})
            with page.expect_response(lambda r: r.url == f.url + "/account/tokens") as answer:
                page.goto(site.url)
            page.wait_for_load_state()
            status = answer.value.status
            check(status in refused, f"the POST from {site.url} was answered {status}, expected {refused}: {text_of(page)}")
            if status == 403:
                # Refused for where it came from: the CSRF token was right.
                expect(page.locator("main")).to_contain_text("must come from the console's own pages")
            print(f"  the POST from {site.url} ({name}) was answered {status}")
        finally:
            site.close()
        check(not f.audit_events(f.token_a, f"made-by-{name}"), f"a form on {site.url} made an API token")

    # The console's own form with a wrong csrf field: 403, nothing made.
    f.goto(page, "/account")
    page.locator("form[action='/account/tokens'] input[name=csrf]").evaluate("e => e.value = 'wrong'")
    page.fill("#token-name", "made-with-a-wrong-csrf")
    r = f.submit(page, "form[action='/account/tokens'] button[type=submit]", "/account/tokens")
    check(r.status == 403, f"a POST with a wrong csrf field: status {r.status}, expected 403")
    check(not f.audit_events(f.token_a, "made-with-a-wrong-csrf"), "a wrong csrf field made an API token")
    # A's session survived both.
    f.goto(page, "/account")
    expect(page.locator("header .who")).to_contain_text(CUSTOMER_A["login"])


def sign_in_with_the_keyboard_only(f):
    page = f.page()
    f.goto(page, "/login")
    focused = lambda: page.evaluate("document.activeElement && document.activeElement.id")  # noqa: E731
    check(focused() == "login", f"the sign-in form opens with focus on {focused()!r}, not the login field")
    page.keyboard.type(CUSTOMER_B["login"])
    page.keyboard.press("Tab")
    check(focused() == "password", f"Tab from the login field went to {focused()!r}, not the password")
    page.keyboard.type(CUSTOMER_B["password"])
    with page.expect_response(lambda r: r.request.method == "POST" and r.url == f.url + "/login") as answer:
        page.keyboard.press("Enter")
    check(answer.value.status == 303, f"Enter in the password field: status {answer.value.status}")
    page.wait_for_url("**/machines")
    expect(page.locator("header .who")).to_contain_text(CUSTOMER_B["login"])
    # The first Tab on a page reaches the skip link, which shows itself and
    # takes the keyboard past the header.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("Tab")
    check(
        page.evaluate("document.activeElement.className") == "skip",
        f"the first Tab went to {page.evaluate('document.activeElement.outerHTML')[:80]}, not the skip link",
    )
    box = page.locator("a.skip").bounding_box()
    check(box is not None and box["x"] >= 0, f"the focused skip link is off screen: {box}")
    page.keyboard.press("Enter")
    check(page.url.endswith("#main"), f"the skip link led to {page.url}")


def screenshots_of_every_page(f):
    page = f.page()
    f.goto(page, "/login")
    f.screenshot(page, "login")
    f.sign_in(page, CUSTOMER_A["login"], CUSTOMER_A["password"])
    page.wait_for_url("**/login/second-factor")
    f.screenshot(page, "second-factor")

    admin = f.admin
    f.goto(admin, "/machines")
    f.screenshot(admin, "machines")
    f.goto(admin, f"/machines/{f.machine_a_id}")
    f.screenshot(admin, "machine")
    f.goto(admin, "/customers")
    f.screenshot(admin, "customers")
    f.goto(admin, "/audit")
    f.screenshot(admin, "audit")
    f.goto(f.customer_a, "/account")
    f.screenshot(f.customer_a, "account")

    phone = f.context(PHONE)
    phone.add_cookies(f.admin.context.cookies())
    narrow = phone.new_page()
    f.goto(narrow, "/machines")
    # Nothing but the table's own scroller may be wider than the phone.
    width = narrow.evaluate("document.documentElement.scrollWidth")
    check(width <= PHONE["width"], f"/machines is {width} px wide on a {PHONE['width']} px phone")
    f.screenshot(narrow, "machines-phone")


def names_are_shown_as_text(f):
    # Done after the screenshots, which show ordinary names.
    page = f.admin
    f.goto(page, "/customers")
    add_customer(f, page, CUSTOMER_X)
    rows = page.locator("main table tbody tr").all_inner_texts()
    check(any(CUSTOMER_X["name"] in r for r in rows), f"/customers does not show {CUSTOMER_X['name']!r} as text: {rows}")
    for path in ("/customers", "/audit"):
        f.goto(page, path)
        check(page.locator("main img").count() == 0, f"a customer's name became an <img> on {path}")
    check(page.title() != "1", "markup in a customer's name ran")


def api_changes_need_a_write_token_or_csrf(f):
    page = f.admin
    new = lambda n: {"name": f"Via API {n}", "admin_login": f"api-admin-{n}", "admin_password": "api-admin-password"}  # noqa: E731
    # A write token (the "May make changes" box) adds a customer; the page
    # lists it: one API behind both.
    f.goto(page, "/account")
    page.fill("#token-name", "flow admin write")
    page.get_by_label("May make changes").check()
    r = f.submit(page, "form[action='/account/tokens'] button[type=submit]", "/account/tokens")
    check(r.status == 200, f"making a write token: status {r.status}")
    write = page.locator("#new-token").inner_text().strip()
    ctx = f.api(write)
    try:
        r = ctx.post("/api/v1/customers", data=new(1))
        check(r.status == 201, f"POST /api/v1/customers with a write token: status {r.status}: {r.text()[:300]}")
    finally:
        ctx.dispose()
    f.goto(page, "/customers")
    check("Via API 1" in text_of(page), "a customer added through the API is not on /customers")
    # The browser's session on the API: a change needs the page's CSRF
    # token in X-CSRF-Token.
    r = page.request.post(f.url + "/api/v1/customers", data=new(2), max_redirects=0)
    check(r.status == 403, f"POST /api/v1/customers with the session and no CSRF header: status {r.status}")
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    r = page.request.post(f.url + "/api/v1/customers", data=new(3), headers={"X-CSRF-Token": csrf}, max_redirects=0)
    check(r.status == 201, f"POST /api/v1/customers with the session and its CSRF header: status {r.status}: {r.text()[:300]}")
    names = [c["name"] for c in f.api_json(write, "/api/v1/customers?q=Via+API")["items"]]
    check(names == ["Via API 1", "Via API 3"], f"customers made through the API: {names}")


def wrong_codes_lock_the_account(f):
    # Last: it locks A (whose verified session lives on).
    page = f.page()
    f.sign_in(page, CUSTOMER_A["login"], CUSTOMER_A["password"])
    page.wait_for_url("**/login/second-factor")
    good = {totp_code(f.totp_a.key, f.totp_a.last + d) for d in range(-2, 4)}
    wrong = [c for c in ("000000", "111111", "222222", "333333", "444444", "555555", "666666") if c not in good]
    for i in range(1, LOCKOUT_AFTER + 1):
        page.fill("#code", wrong[i - 1])
        r = f.submit(page, "button[type=submit]", "/login/second-factor")
        want = 401 if i < LOCKOUT_AFTER else 429
        check(r.status == want, f"wrong code {i}: status {r.status}, expected {want}: {text_of(page)}")
    expect(page.locator(".problem")).to_contain_text("locked")
    # The sign-in form that the lock shows works: the right password is
    # answered with the lock, not with a stale form.
    page.fill("#login", CUSTOMER_A["login"])
    page.fill("#password", CUSTOMER_A["password"])
    r = f.submit(page, "form[action='/login'] button[type=submit]", "/login")
    check(r.status == 429, f"signing in from the form shown at the lock: status {r.status}, expected 429: {text_of(page)}")


def no_errors_in_the_browser(f):
    check(not f.browser_errors, "the browser saw errors on the console's pages:\n  " + "\n  ".join(f.browser_errors))


def a_visitor_signs_up(f):
    page = f.page()
    f.goto(page, "/login")
    with page.expect_navigation():
        page.get_by_role("link", name="Sign up").click()
    page.fill("#name", CUSTOMER_C["name"])
    page.fill("#email", CUSTOMER_C["email"])
    page.fill("#login", CUSTOMER_C["login"])
    page.fill("#password", CUSTOMER_C["password"])
    page.fill("#again", CUSTOMER_C["password"])
    r = f.submit(page, "form[action='/signup'] button[type=submit]", "/signup")
    check(r.status == 303, f"sign-up answered {r.status}: {text_of(page)}")
    check(page.url.endswith("/machines/new"), f"after sign-up the browser is at {page.url}")
    # Signed in as the new customer's admin, who sees no other customer's machine.
    f.goto(page, "/machines")
    check(f.machine_a not in text_of(page) and f.machine_b not in text_of(page), f"a new customer sees others' machines: {text_of(page)}")
    f.gamma = page


def the_new_customer_registers_a_pc(f):
    page = f.gamma
    f.goto(page, "/machines")
    with page.expect_navigation():
        page.get_by_role("link", name="Register a PC").click()
    page.fill("#name", PC["name"])
    page.fill("#ip", PC["ip"])
    page.fill("#mac", PC["mac"])
    r = f.submit(page, "form[action='/machines/new'] button[type=submit]", "/machines/new")
    check(r.status == 200, f"registering {PC['name']}: {r.status}: {text_of(page)}")
    token = page.locator("#machine-token").inner_text().strip()
    check(len(token) > 40, f"the credential shown is {token!r}")
    # Shown once: the machine's page never shows it again.
    with page.expect_navigation():
        page.get_by_role("link", name=f"Make boot media for {PC['name']}").click()
    check(token not in page.content(), "the machine's page shows its credential again")
    expect(page.locator(".facts")).to_contain_text(PC["ip"])
    expect(page.locator(".facts")).to_contain_text(PC["mac"])
    f.pc_path = page.url[len(f.url):]
    # A registered name or MAC address is refused the second time.
    f.goto(page, "/machines/new")
    page.fill("#name", "gamma-pc2")
    page.fill("#mac", PC["mac"].upper())
    r = f.submit(page, "form[action='/machines/new'] button[type=submit]", "/machines/new")
    check(r.status == 400 and "registered already" in text_of(page), f"a second PC with the same MAC: {r.status}: {text_of(page)}")


def media_file_of(f, kind):
    """The file the receiver made for the newest `kind` media of the PC."""
    db = sqlite3.connect(f.store / "receiver.db", timeout=10)
    (media,) = db.execute(
        "SELECT media FROM media_requests WHERE machine = ? AND kind = ? ORDER BY id DESC LIMIT 1", (PC["name"], kind)
    ).fetchone()
    db.close()
    return f.store / "boot" / str(media) / ("boot.iso" if kind == "iso" else "usb.img")


def the_new_customer_downloads_an_iso_made_for_its_pc(f):
    page = f.gamma
    f.goto(page, f.pc_path)
    page.check("input[name=kind][value=iso]")
    page.check("input[name=mode][value=menu]")
    r = f.submit(page, "form[action$='/media'] button[type=submit]", f.pc_path + "/media")
    check(r.status == 303, f"asking for an ISO: {r.status}: {text_of(page)}")
    expect(page.locator("#media")).to_contain_text("making")
    # The list refreshes itself (htmx) until the ISO is made.
    download = page.locator("#media a.download")
    expect(download).to_be_visible(timeout=MEDIA_TIMEOUT_MS)
    with page.expect_download() as d:
        download.click()
    got = Path(d.value.path()).read_bytes()
    made = media_file_of(f, "iso").read_bytes()
    check(len(got) > 1 << 20 and got == made, f"the download ({len(got)} B) differs from the ISO the receiver made ({len(made)} B)")
    check(d.value.suggested_filename == f"lifeline-{PC['name']}-menu.iso", f"saved as {d.value.suggested_filename}")
    f.media_iso = download.get_attribute("href")
    # Notified in the console and by mail.
    f.goto(page, "/machines")
    expect(page.locator(".notices")).to_contain_text(f"boot ISO for {PC['name']} is ready")
    f.smtp.wait_for(CUSTOMER_C["email"], f"The boot ISO for {PC['name']} is ready")
    f.goto(page, f.pc_path)
    page.screenshot(path=str(f.shots / "boot-media.png"), full_page=True)


def the_new_customer_arms_network_boot(f):
    page = f.gamma
    f.goto(page, f.pc_path)
    page.check("input[name=kind][value=netboot]")
    r = f.submit(page, "form[action$='/media'] button[type=submit]", f.pc_path + "/media")
    check(r.status == 303, f"asking for network boot: {r.status}: {text_of(page)}")
    arm = page.get_by_role("button", name="Arm network boot")
    expect(arm).to_be_visible(timeout=MEDIA_TIMEOUT_MS)
    page.locator("#media input[name=minutes]").first.fill("30")
    with page.expect_navigation():
        arm.click()
    expect(page.locator("#media")).to_contain_text("armed until")
    db = sqlite3.connect(f.store / "receiver.db", timeout=10)
    (until,) = db.execute(
        "SELECT b.armed_until FROM media_requests r JOIN boot_media b ON b.id = r.media WHERE r.machine = ? AND r.kind = 'netboot'",
        (PC["name"],),
    ).fetchone()
    db.close()
    check(until and until > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), f"network boot is armed until {until}")


def others_cannot_have_the_new_customers_media(f):
    # Customer B, signed in, asks for the ISO's address: as if none.
    f.goto(f.customer_b, f.media_iso, status=404)
    f.goto(f.customer_b, f.pc_path, status=404)
    r = f.customer_b.request.get(f.url + "/api/v1" + f.media_iso, max_redirects=0)
    check(r.status == 404, f"B's session on the API download: {r.status}")
    r = f.customer_b.request.get(f.url + "/api/v1" + f.media_iso, headers={"Authorization": f"Bearer {f.token_b}"})
    check(r.status == 404, f"B's token on the API download: {r.status}")
    # Nobody signed in: to the sign-in form.
    anon = f.page()
    f.goto(anon, f.media_iso)
    check(anon.url.endswith("/login"), f"the ISO's address without a session led to {anon.url}")


STEPS = [
    first_admin_signs_in_and_changes_password,
    admin_adds_customers,
    machines_go_to_customers,
    customer_a_sets_up_a_second_factor,
    customer_a_makes_an_api_token,
    customer_b_cannot_reach_customer_a,
    audit_trail_pages_back,
    wrong_passwords_lock_the_account,
    changes_from_another_site_are_refused,
    sign_in_with_the_keyboard_only,
    screenshots_of_every_page,
    names_are_shown_as_text,
    api_changes_need_a_write_token_or_csrf,
    wrong_codes_lock_the_account,
    a_visitor_signs_up,
    the_new_customer_registers_a_pc,
    the_new_customer_downloads_an_iso_made_for_its_pc,
    the_new_customer_arms_network_boot,
    others_cannot_have_the_new_customers_media,
    no_errors_in_the_browser,
]


def trusting_home(ca, into):
    """A HOME whose NSS database (what Chromium on Linux reads) trusts `ca`
    to identify web sites."""
    certutil = shutil.which("certutil")
    check(certutil, "certutil not found: install Debian's libnss3-tools (scripts/setup.sh does)")
    db = into / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run([certutil, "-d", f"sql:{db}", "-N", "--empty-password"], check=True)
    subprocess.run([certutil, "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "lifeline-receiver-ca", "-i", str(ca)], check=True)
    return into


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the console, https://HOST:PORT")
    ap.add_argument("--store", required=True, help="the receiver's store (a fresh one)")
    ap.add_argument("--screenshots", required=True, help="directory for the pages' screenshots")
    ap.add_argument("--machine-a", required=True, help="a registered machine the flow gives to customer A")
    ap.add_argument("--machine-b", required=True, help="a registered machine the flow gives to customer B")
    ap.add_argument("--smtp-port", type=int, required=True, help="the port of --smtp-url: the flow's mail sink listens there")
    ap.add_argument("--receiver-bin", required=True, help="the lifeline-receiver binary (customer give)")
    ap.add_argument("--artifacts", help="where a failure's screenshots go")
    ap.add_argument("--only", help="run the steps up to and including this one")
    args = ap.parse_args()

    expect.set_options(timeout=TIMEOUT_MS)
    check(Path(CHROMIUM).exists(), f"{CHROMIUM} not found: install Debian's chromium (scripts/setup.sh does)")
    ca = Path(args.store) / "tls" / "ca.crt"
    check(ca.exists(), f"{ca} not found: is {args.store} a receiver's store?")
    # Playwright's own HTTP client (the API checks) runs in its Node driver,
    # which reads this when it starts.
    os.environ["NODE_EXTRA_CA_CERTS"] = str(ca)
    home = Path(tempfile.mkdtemp(prefix="lifeline-console-flow-"))
    failed = False
    try:
        trusting_home(ca, home)
        with sync_playwright() as pw:
            f = Flow(pw, args, home)
            try:
                for step in STEPS:
                    t0 = time.monotonic()
                    print(f"step {step.__name__} ...", flush=True)
                    try:
                        step(f)
                    except (Failed, AssertionError, PlaywrightError) as e:
                        print(f"FAILED step {step.__name__}: {e}", flush=True)
                        if not isinstance(e, Failed):
                            traceback.print_exc()
                        f.save_failure_artifacts()
                        failed = True
                        break
                    print(f"step {step.__name__}: ok ({time.monotonic() - t0:.1f} s)", flush=True)
                    if args.only == step.__name__:
                        break
            finally:
                f.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if failed:
        sys.exit(1)
    print(f"console flow: all {len(STEPS)} steps passed; screenshots in {args.screenshots}")


if __name__ == "__main__":
    main()
