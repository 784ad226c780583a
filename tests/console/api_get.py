#!/usr/bin/env python3
"""Signs in to a receiver's console as its first admin (the password from
STORE/console-first-login) and prints the answer to a GET of the console's
JSON API, for tests that look at what the console shows.

    api_get.py --url https://127.0.0.1:PORT --store STORE /api/v1/machines
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import Client  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("path")
    a = ap.parse_args()
    first = dict(l.split(": ", 1) for l in open(f"{a.store}/console-first-login").read().splitlines() if ": " in l)
    c = Client(a.url, f"{a.store}/tls/ca.crt")
    c.sign_in(first["login"], first["password"])
    status, body, _, _ = c.request("GET", a.path)
    print(body)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
