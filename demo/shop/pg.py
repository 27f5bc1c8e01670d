"""A PostgreSQL client in the standard library alone, for the demo shop.

Enough of the frontend/backend protocol (3.0) for a service: libpq's PG* variables,
SSL when the server offers it (PGSSLMODE: disable, prefer, require, verify-ca,
verify-full), cleartext, MD5 and SCRAM-SHA-256 authentication (PGREQUIREAUTH honoured),
the simple query protocol with text results, and a pool that keeps connections open
between requests.

Why not `psql -c` per request, as the shop did at first: every request then started a
process and a server backend and ran SCRAM's key derivation, 50-100 ms of CPU each; at
the demo's 15 requests a second on each of two copies that filled a 2-core machine, and
the queueing drowned the 40 ms regression `rehearse compare` is shown finding.
"""

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import select
import socket
import ssl
import struct
import threading


class Error(Exception):
    """The server refused a statement; the connection is still usable."""


class ConnectionLost(Exception):
    """The connection failed (cannot connect, authentication, reset, timeout)."""


def settings_from_env(env=None):
    """libpq's connection settings from PG* variables, with libpq's defaults."""
    env = os.environ if env is None else env
    user = env.get("PGUSER") or getpass.getuser()
    return {
        "host": env.get("PGHOST") or "/var/run/postgresql",
        "port": int(env.get("PGPORT") or 5432),
        "user": user,
        "database": env.get("PGDATABASE") or user,
        "password": env.get("PGPASSWORD"),
        "application_name": env.get("PGAPPNAME") or "",
        "connect_timeout": float(env.get("PGCONNECT_TIMEOUT") or 0) or None,
        "sslmode": env.get("PGSSLMODE") or "prefer",
        "sslrootcert": env.get("PGSSLROOTCERT"),
        "require_auth": [m for m in (env.get("PGREQUIREAUTH") or "").split(",") if m],
    }


class Connection:
    """One session. `query` runs statements; any failure of the connection itself
    raises ConnectionLost and leaves it closed."""

    def __init__(self, settings, statement_timeout_ms):
        self._buf = bytearray()
        self.closed = False
        # Reads wait for the statement's own timeout, plus time for its answer.
        self._io_timeout = statement_timeout_ms / 1000.0 + 5
        try:
            self._sock = self._connect(settings)
            self._startup(settings, statement_timeout_ms)
        except (OSError, ssl.SSLError, ValueError, struct.error) as err:
            self.close()
            raise ConnectionLost(f"cannot connect to {settings['host']}:{settings['port']}: {err}") from None
        except (ConnectionLost, Error):
            self.close()
            raise

    def _connect(self, s):
        host, port = s["host"], s["port"]
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(s["connect_timeout"])
            sock.connect(os.path.join(host, f".s.PGSQL.{port}"))
            sock.settimeout(self._io_timeout)
            return sock
        sock = socket.create_connection((host, port), timeout=s["connect_timeout"])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._io_timeout)
        mode = s["sslmode"]
        if mode in ("disable", "allow"):
            return sock
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        answer = sock.recv(1)
        if answer != b"S":
            if mode in ("require", "verify-ca", "verify-full"):
                raise ConnectionLost(f"the server at {host}:{port} does not support SSL (sslmode={mode})")
            return sock
        if mode in ("verify-ca", "verify-full"):
            context = ssl.create_default_context(cafile=s["sslrootcert"])
            context.check_hostname = mode == "verify-full"
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(sock, server_hostname=host)

    def _startup(self, s, statement_timeout_ms):
        params = {
            "user": s["user"],
            "database": s["database"],
            "client_encoding": "UTF8",
            "statement_timeout": str(statement_timeout_ms),
        }
        if s["application_name"]:
            params["application_name"] = s["application_name"]
        body = struct.pack("!i", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        self._sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self._authenticate(s)
        while True:
            kind, body = self._read()
            if kind == b"Z":
                return
            if kind == b"E":
                raise ConnectionLost(_error_text(body))
            # S (parameter status), K (backend key), N (notice): nothing to keep.

    def _authenticate(self, s):
        allowed = s["require_auth"]
        password = s["password"]
        scram = None
        while True:
            kind, body = self._read()
            if kind == b"E":
                raise ConnectionLost(_error_text(body))
            if kind != b"R":
                raise ConnectionLost(f"unexpected message {kind!r} during authentication")
            (code,) = struct.unpack_from("!i", body)
            method = {0: "none", 3: "password", 5: "md5", 10: "scram-sha-256"}.get(code)
            if code == 0:
                if allowed and scram is None and "none" not in allowed:
                    raise ConnectionLost(f"the server asked for no authentication; PGREQUIREAUTH={','.join(allowed)}")
                return
            if method and allowed and method not in allowed:
                raise ConnectionLost(f"the server asked for {method} authentication; PGREQUIREAUTH={','.join(allowed)}")
            if code in (3, 5, 10) and password is None:
                raise ConnectionLost("the server asked for a password and PGPASSWORD is not set")
            if code == 3:
                self._send(b"p", password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5((password + s["user"]).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self._send(b"p", b"md5" + outer.encode() + b"\0")
            elif code == 10:
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise ConnectionLost("the server offers no SCRAM-SHA-256")
                scram = _Scram(password)
                first = scram.client_first()
                self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
            elif code == 11 and scram is not None:
                self._send(b"p", scram.client_final(body[4:]))
            elif code == 12 and scram is not None:
                scram.verify_server(body[4:])
            else:
                raise ConnectionLost(f"unsupported authentication request {code}")

    def query(self, sql):
        """Runs `sql` (simple query protocol); the rows of its last result, each a
        tuple of text values (None for NULL). Error if the server refused it."""
        if self.closed:
            raise ConnectionLost("the connection is closed")
        try:
            self._send(b"Q", sql.encode() + b"\0")
            rows, error = [], None
            while True:
                kind, body = self._read()
                if kind == b"T":
                    rows = []
                elif kind == b"D":
                    rows.append(_data_row(body))
                elif kind == b"E":
                    error = _error_text(body)
                elif kind == b"Z":
                    break
                # C (complete), I (empty), N (notice), S (parameter status): nothing.
        except (OSError, ssl.SSLError, struct.error) as err:
            self.close()
            raise ConnectionLost(f"connection lost: {err}") from None
        except ConnectionLost:
            self.close()
            raise
        if error is not None:
            raise Error(error)
        return rows

    def stale(self):
        """True when the server has spoken or hung up while the connection sat idle (a
        restart's "terminating connection", a reset): it cannot be used."""
        if self.closed:
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self._buf)

    def close(self):
        if self.closed:
            return
        self.closed = True
        sock = getattr(self, "_sock", None)
        if sock is not None:
            try:
                sock.sendall(b"X\0\0\0\4")  # Terminate
            except (OSError, ssl.SSLError):
                pass
            sock.close()

    def _send(self, kind, body):
        self._sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def _read(self):
        header = self._read_exact(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        if length < 4 or length > 1 << 30:
            raise ConnectionLost(f"malformed message length {length}")
        return kind, self._read_exact(length - 4)

    def _read_exact(self, n):
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionLost("the server closed the connection")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _data_row(body):
    (count,) = struct.unpack_from("!h", body)
    offset, values = 2, []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, offset)
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[offset:offset + length].decode("utf-8"))
            offset += length
    return tuple(values)


def _error_text(body):
    """An ErrorResponse's severity, message and SQLSTATE as one line."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return f"{fields.get('S', 'ERROR')}: {fields.get('M', 'unknown error')} (SQLSTATE {fields.get('C', '?')})"


class _Scram:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it: no channel binding, the
    user name left empty (the server takes the startup packet's)."""

    def __init__(self, password):
        self._password = password.encode("utf-8")
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._auth_message = None
        self._salted = None

    def client_first(self):
        return f"n,,{self._first_bare}".encode()

    def client_final(self, server_first):
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self._nonce) or iterations < 1:
            raise ConnectionLost("SCRAM: the server's nonce or iteration count is wrong")
        self._salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = hmac.digest(self._salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, self._auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final):
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(","))
        server_key = hmac.digest(self._salted, b"Server Key", "sha256")
        expected = hmac.digest(server_key, self._auth_message, "sha256")
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), expected):
            raise ConnectionLost("SCRAM: the server's signature is wrong (not the server we asked for?)")


class Pool:
    """Connections kept open between requests: a request takes an idle one (dropping any
    that went stale while idle) or opens a new one, and gives it back after its query.
    At most `max_idle` are kept; there is no limit on those in use."""

    def __init__(self, settings, statement_timeout_ms, max_idle=8):
        self._settings = settings
        self._timeout_ms = statement_timeout_ms
        self._max_idle = max_idle
        self._idle = []
        self._lock = threading.Lock()

    def query(self, sql):
        conn = self._take()
        try:
            rows = conn.query(sql)
        except Error:
            self._give(conn)
            raise
        except ConnectionLost:
            conn.close()
            raise
        self._give(conn)
        return rows

    def _take(self):
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Connection(self._settings, self._timeout_ms)
            if not conn.stale():
                return conn
            conn.close()

    def _give(self, conn):
        with self._lock:
            if not conn.closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()
