#!/usr/bin/env bash
# Seeds any server with troupe's ledger routes for the wrk scenarios of
# bench.sh (scripts/wrk/*.lua): opens "hot" and b-1 .. b-ACCOUNTS and deposits
# AMOUNT into each, over PARALLEL keep-alive connections. Exits non-zero when
# any answer was not 2xx, naming the first few.
#
#   benches/peers/seed.sh BASE_URL          e.g. benches/peers/seed.sh http://127.0.0.1:18080
#
# Env: ACCOUNTS (10000), AMOUNT (1000000), PARALLEL (8). Needs python3 only.
set -euo pipefail
BASE_URL=${1:?usage: seed.sh BASE_URL}
export BASE_URL ACCOUNTS=${ACCOUNTS:-10000} AMOUNT=${AMOUNT:-1000000} PARALLEL=${PARALLEL:-8}

exec python3 - <<'PY'
import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

url = urlsplit(os.environ["BASE_URL"])
accounts, amount = int(os.environ["ACCOUNTS"]), int(os.environ["AMOUNT"])
parallel = int(os.environ["PARALLEL"])
ids = ["hot"] + ["b-%d" % i for i in range(1, accounts + 1)]
deposit = json.dumps({"amount": amount})
errors = []
errors_lock = threading.Lock()


class Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self):
        self.conn = None

    def send(self, method, path, body):
        for attempt in (1, 2, 3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.conn.close()
                    self.conn = None
                return response.status, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 3:
                    raise


def seed(mine):
    client = Client()
    for id_ in mine:
        for method, path, body in (("PUT", "/v1/accounts/" + id_, "{}"),
                                   ("POST", "/v1/accounts/%s/deposits" % id_, deposit)):
            try:
                status, data = client.send(method, path, body)
            except Exception as e:  # noqa: BLE001 - reported with the rest
                status, data = 0, str(e).encode()
            if not 200 <= status < 300:
                with errors_lock:
                    errors.append("%s %s: %d %s" % (method, path, status, data[:200].decode(errors="replace")))


started = time.monotonic()
workers = [threading.Thread(target=seed, args=(ids[k::parallel],)) for k in range(parallel)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("seeded %d accounts with %d each in %.1f s at %s: %d failed requests"
      % (len(ids), amount, time.monotonic() - started, os.environ["BASE_URL"], len(errors)))
for e in errors[:10]:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
