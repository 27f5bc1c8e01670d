#!/usr/bin/env python3
"""The demo shop: a tiny HTTP service backed by PostgreSQL.

Standard library only. It reaches the database through pg.py beside it (the
protocol in the standard library, connections kept open between requests), so the
demo needs no driver package. Each release directory under
demo/releases/ carries its own copy of this file, because a release is installed
from its directory alone.

Environment:
  PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
                libpq's connection settings for the shop database (required; pg.py
                reads them as libpq does; PGSSLMODE, PGREQUIREAUTH, PGAPPNAME and
                PGCONNECT_TIMEOUT too)
  PORT          TCP port to listen on (default 8080)
  HOST          address to bind (default 127.0.0.1)
  SHOP_RELEASE  reported by /version only when no VERSION file sits next to this file

A SLOW file next to this one ("PATH MILLISECONDS", release v2-slow) makes that endpoint
answer that much later: a deliberate regression for `rehearse compare` to find.

Endpoints (GET):
  /health           200 "ok" when `select 1` works against the database, else 503
  /version          the release version, as plain text
  /products         JSON list of {id, sku, name, price_cents}
  /customers/count  JSON {"count": N}
and POST:
  /events           logs {"order_id": N, "kind": "viewed"|"paid"|"packed"|"shipped"}
                    in order_events: 201 {"logged": true}, 400 for anything else

Requests are logged to stderr. SIGTERM or SIGINT stops the server promptly with
exit status 0.
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pg

HERE = Path(__file__).resolve().parent
# A statement that runs (or waits on a lock) longer than this fails, and so does the
# request; the server cancels it (statement_timeout).
QUERY_TIMEOUT_MS = 10_000

# Bound the connection attempt so that /health answers 503 quickly when the database
# is unreachable instead of hanging.
SETTINGS = pg.settings_from_env({"PGCONNECT_TIMEOUT": "5", "PGAPPNAME": "shop", **os.environ})
POOL = pg.Pool(SETTINGS, QUERY_TIMEOUT_MS)


def read_release():
    try:
        return (HERE / "VERSION").read_text(encoding="utf-8").strip()
    except OSError:
        return os.environ.get("SHOP_RELEASE", "unknown")


RELEASE = read_release()


def read_slow():
    """(path, seconds) of a deliberately slow endpoint, from a SLOW file beside this one."""
    try:
        path, ms = (HERE / "SLOW").read_text(encoding="utf-8").split()
        return path, int(ms) / 1000.0
    except (OSError, ValueError):
        return None, 0.0


SLOW_PATH, SLOW_SECONDS = read_slow()


class DatabaseError(Exception):
    pass


def query(sql):
    """Run one SQL statement on a pooled connection; the first column of its first row
    as text ("" when it returns none)."""
    try:
        rows = POOL.query(sql)
    except (pg.Error, pg.ConnectionLost) as err:
        raise DatabaseError(str(err)) from None
    return rows[0][0] if rows and rows[0] and rows[0][0] is not None else ""


def health():
    try:
        ok = query("select 1") == "1"
    except DatabaseError as err:
        return 503, "text/plain", f"unhealthy: {err}\n"
    if not ok:
        return 503, "text/plain", "unhealthy: unexpected answer to select 1\n"
    return 200, "text/plain", "ok\n"


def version():
    return 200, "text/plain", RELEASE + "\n"


def products():
    rows = query("select coalesce(json_agg(p order by p.id), '[]'::json) "
                 "from (select id, sku, name, price_cents from products) p")
    return 200, "application/json", json.dumps(json.loads(rows)) + "\n"


def customers_count():
    count = int(query("select count(*) from customers"))
    return 200, "application/json", json.dumps({"count": count}) + "\n"


EVENT_KINDS = ("viewed", "paid", "packed", "shipped")


def log_event(body):
    """POST /events: one row of the event log (values checked, so none reaches SQL as text)."""
    try:
        event = json.loads(body or b"{}")
        order_id, kind = int(event["order_id"]), event["kind"]
    except (ValueError, KeyError, TypeError):
        return 400, "application/json", '{"error": "expected {\\"order_id\\": N, \\"kind\\": K}"}\n'
    if kind not in EVENT_KINDS or not 0 < order_id < 2**62:
        return 400, "application/json", '{"error": "unknown kind or order"}\n'
    query(f"insert into order_events (order_id, kind) values ({order_id}, '{kind}')")
    return 201, "application/json", '{"logged": true}\n'


POST_ROUTES = {
    "/events": log_event,
}

ROUTES = {
    "/health": health,
    "/version": version,
    "/products": products,
    "/customers/count": customers_count,
}


class Server(ThreadingHTTPServer):
    # A listen backlog a real server would have (the standard library's default is 5:
    # a burst of requests while the database is slow would be refused at the door).
    request_queue_size = 128
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    server_version = "shop/" + RELEASE

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == SLOW_PATH:
            time.sleep(SLOW_SECONDS)
        self.answer(ROUTES.get(path), ())

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 16)) if length > 0 else b""
        self.answer(POST_ROUTES.get(path), (body,))

    def answer(self, route, args):
        """Runs `route` (None: 404) and replies with what it returns, or 503/500."""
        if route is None:
            self.reply(404, "application/json", '{"error": "not found"}\n')
            return
        try:
            status, content_type, body = route(*args)
        except DatabaseError as err:
            self.log_message("database error: %s", err)
            status, content_type, body = 503, "application/json", '{"error": "database unavailable"}\n'
        except Exception as err:  # keep serving; report the bug in the log
            self.log_message("internal error: %r", err)
            status, content_type, body = 500, "application/json", '{"error": "internal error"}\n'
        self.reply(status, content_type, body)

    def reply(self, status, content_type, body):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stop(signum, _frame):
    # Raised in the main thread, this unwinds serve_forever() at once.
    raise SystemExit(0)


def main():
    missing = [v for v in ("PGHOST", "PGDATABASE") if not os.environ.get(v)]
    if missing:
        print(f"shop: {' and '.join(missing)} not set (libpq's PG* variables name the database)",
              file=sys.stderr)
        return 2
    host = os.environ.get("HOST", "127.0.0.1")
    try:
        port = int(os.environ.get("PORT", "8080"))
        server = Server((host, port), Handler)
    except (ValueError, OSError) as err:
        print(f"shop: cannot listen on {host}:{os.environ.get('PORT', '8080')}: {err}",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"shop {RELEASE} listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        print("shop: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
