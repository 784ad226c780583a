#!/usr/bin/env python3
"""The console under load (issue 17): a store seeded with 10,000 machines,
100,000 images and 1,000,000 audit entries, and 50 users at once (a
provider admin and 49 customers' admins, each signed in with its own
session from its own address) paging and searching every list, over HTTPS
to the real receiver, each viewing a page about every second
(--think-ms).

Prints the server time (the console's Server-Timing header) per page,
p50/p99/max, and the client's round trips; exits 1 if any request failed or
a list page's server-time p99 is over --p99-ms.

    load.py --url https://127.0.0.1:PORT --store STORE [--users 50] [--p99-ms 50]

The receiver must be running on STORE with its console at URL, and the
store must be new (the first admin's password is read from
STORE/console-first-login).
"""

import argparse
import concurrent.futures
import http.client
import json
import random
import re
import sqlite3
import ssl
import statistics
import sys
import threading
import time
import urllib.parse

MACHINES = 10_000
IMAGES = 100_000
AUDIT = 1_000_000


class Client:
    """One browser: its own TLS connection (kept alive) and cookies."""

    def __init__(self, url, ca, source="127.0.0.1"):
        u = urllib.parse.urlsplit(url)
        self.source = source
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.conn = None
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if isinstance(body, dict):
            body = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.ctx, timeout=30, source_address=(self.source, 0)
                )
            try:
                started = time.perf_counter()
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                rtt = (time.perf_counter() - started) * 1000
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed: once more.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        for c in r.headers.get_all("Set-Cookie") or []:
            k, v = c.split(";", 1)[0].split("=", 1)
            if v:
                self.cookies[k] = v
            else:
                self.cookies.pop(k, None)
        timing = r.headers.get("Server-Timing", "")
        m = re.search(r"dur=([0-9.]+)", timing)
        return r.status, data.decode("utf-8", "replace"), float(m.group(1)) if m else None, rtt

    def sign_in(self, login, password):
        status, page, _, _ = self.request("GET", "/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        status, _, _, _ = self.request("POST", "/login", {"csrf": csrf, "login": login, "password": password})
        if status != 303:
            raise SystemExit(f"sign-in of {login} answered {status}")


def seed(store, customers):
    """Machines, images, jobs and audit entries straight into the database
    (the receiver made its schema), spread over `customers` (ids)."""
    db = sqlite3.connect(f"{store}/receiver.db", timeout=30)
    rnd = random.Random(17)
    started = time.time()
    with db:
        db.executemany(
            "INSERT INTO machines (name, token_hash, notes, public_id, customer_id, mac, ip) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    f"pc-{i:05d}",
                    rnd.randbytes(32),
                    f"desk {i % 300}",
                    rnd.randbytes(12).hex(),
                    customers[i % len(customers)],
                    "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255),
                    f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                )
                for i in range(MACHINES)
            ),
        )
        db.executemany(
            "INSERT INTO jobs (machine, kind, image, state, done_bytes, total_bytes, finished_at) VALUES (?, 'backup', ?, 'ok', ?, ?, '2026-12-01T00:00:00Z')",
            ((f"pc-{i % MACHINES:05d}", f"img-{i}", 1 << 30, 1 << 30) for i in range(IMAGES)),
        )
        db.executemany(
            "INSERT INTO images (machine, name, disk, disk_size, image_bytes, stored_bytes, job) VALUES (?, ?, 'sda', ?, ?, ?, ?)",
            ((f"pc-{i % MACHINES:05d}", f"img-{i}", 256 << 30, 40 << 30, rnd.randrange(1 << 30), i + 1) for i in range(IMAGES)),
        )
        events = ["replication connected", "boot media armed", "history pruned", "sign-in refused", "image verified"]
        db.executemany(
            "INSERT INTO audit (machine, event, detail, customer_id, actor) VALUES (?, ?, ?, ?, ?)",
            (
                (f"pc-{i % MACHINES:05d}", events[i % len(events)], f"entry {i}", customers[i % MACHINES % len(customers)], "")
                for i in range(AUDIT)
            ),
        )
    db.close()
    print(f"seeded {MACHINES} machines, {IMAGES} images and jobs, {AUDIT} audit entries in {time.time() - started:.1f} s")


def pages(rnd, is_provider):
    """What one user asks for next: every list, first and deep pages, searches."""
    limit = 50
    deep = rnd.randrange(0, 190) * limit  # a customer's 204 machines; the provider's 10,000
    return [
        ("machines", "/machines"),
        ("machines, deep page", f"/machines?offset={deep}"),
        ("machines, search", f"/machines?q=pc-0{rnd.randrange(10)}{rnd.randrange(10)}"),
        ("machines, htmx search", f"/machines?q=pc-{rnd.randrange(10)}"),
        ("images", "/images"),
        ("images, deep page", f"/images?offset={rnd.randrange(0, 40) * limit}"),
        ("jobs", "/jobs"),
        ("audit", "/audit"),
        ("audit, older page", f"/audit?before={rnd.randrange(1000, AUDIT)}"),
        ("customers", "/customers"),
        ("api machines", f"/api/v1/machines?offset={deep}"),
        ("api audit", "/api/v1/audit"),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--p99-ms", type=float, default=50.0)
    # People read a page before the next: each user waits this long on
    # average (uniformly from half to one and a half times) between views.
    ap.add_argument("--think-ms", type=float, default=1000.0)
    a = ap.parse_args()
    ca = f"{a.store}/tls/ca.crt"
    first = dict(l.split(": ", 1) for l in open(f"{a.store}/console-first-login").read().splitlines() if ": " in l)

    admin = Client(a.url, ca)
    admin.sign_in(first["login"], first["password"])
    status, page, _, _ = admin.request("GET", "/account")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    status, page, _, _ = admin.request("POST", "/account/tokens", {"csrf": csrf, "name": "load", "write": "1"})
    token = re.search(r'id="new-token">(llt_[0-9a-f]+)<', page).group(1)
    users = []
    for i in range(a.users - 1):
        login, password = f"admin{i}@customer{i}.test", f"password of customer {i}"
        body = json.dumps({"name": f"Customer {i:02d}", "email": f"it@customer{i}.test", "admin_login": login, "admin_password": password})
        status, text, _, _ = admin.request(
            "POST", "/api/v1/customers", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        if status != 201:
            raise SystemExit(f"adding customer {i}: {status} {text}")
        users.append((login, password))
    db = sqlite3.connect(f"{a.store}/receiver.db", timeout=30)
    customers = [r[0] for r in db.execute("SELECT id FROM customers ORDER BY id")]
    db.close()
    seed(a.store, customers)

    clients = [admin]
    # Each user from its own address, as from its own office.
    for n, (login, password) in enumerate(users):
        c = Client(a.url, ca, source=f"127.0.2.{n + 1}")
        c.sign_in(login, password)
        clients.append(c)

    timings, rtts, errors = {}, [], []
    lock = threading.Lock()

    def user(n):
        rnd = random.Random(n)
        c = clients[n]
        for _ in range(a.rounds):
            for name, path in pages(rnd, n == 0):
                headers = {"HX-Request": "true"} if "htmx" in name else {}
                try:
                    status, body, server_ms, rtt = c.request("GET", path, headers=headers)
                except OSError as e:
                    with lock:
                        errors.append(f"{name} {path}: {e!r}")
                    c.conn = None
                    continue
                time.sleep(rnd.uniform(0.5, 1.5) * a.think_ms / 1000)
                with lock:
                    if status != 200:
                        errors.append(f"{name} {path}: {status} {body[:200]}")
                    elif server_ms is None:
                        errors.append(f"{name} {path}: no Server-Timing header")
                    else:
                        timings.setdefault(name, []).append(server_ms)
                        rtts.append(rtt)

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for f in [pool.submit(user, n) for n in range(len(clients))]:
            f.result()
    took = time.time() - started

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p))]

    total = sum(len(v) for v in timings.values())
    print(f"{len(clients)} users at once, {total} requests in {took:.1f} s ({total / took:.0f}/s); {len(errors)} errors")
    print(f"{'page':<24} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   (server time)")
    worst = 0.0
    for name, xs in timings.items():
        p99 = pct(xs, 0.99)
        worst = max(worst, p99)
        print(f"{name:<24} {len(xs):>5} {statistics.median(xs):>8.2f} {p99:>8.2f} {max(xs):>8.2f}")
    print(f"client round trips: p50 {statistics.median(rtts):.1f} ms, p99 {pct(rtts, 0.99):.1f} ms")
    for e in errors[:10]:
        print("error:", e)
    if errors:
        return 1
    if worst > a.p99_ms:
        print(f"FAILED: a list page's server-time p99 is {worst:.1f} ms, over {a.p99_ms} ms")
        return 1
    print(f"ok: every list page's server-time p99 is under {a.p99_ms} ms, no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
