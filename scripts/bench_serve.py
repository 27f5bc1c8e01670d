#!/usr/bin/env python3
"""`rehearse serve` (make bench, section serve): prints a Markdown section on stdout,
progress on stderr. Stdlib only; the release build (target/release/rehearse).

1. A request's time from the click (the POST the portal's form sends) to the run's
   first step on the watcher's event stream, with a slot free: 20 requests one after
   another, each waited for to its end before the next; min/median/max.
   Beside it, the same run's first step from `rehearse run` (process start to its first
   step line on stderr): what the server adds is the difference.
2. The server's own memory (VmRSS, and VmHWM: its peak) after 100 finished runs in its
   history (their requests, audit entries and event streams kept).

The description is `quick` (no database, one suite of `true`): what is measured is the
server's path, not PostgreSQL's.
"""
import http.client, json, os, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("REHEARSE_BIN", ROOT / "target/release/rehearse"))
N_LATENCY = int(os.environ.get("BENCH_SERVE_REPS", "20"))
N_HISTORY = 100


def log(s):
    print(s, file=sys.stderr, flush=True)


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"X-Forwarded-User": "bench"}
    h.update(headers or {})
    if body is not None:
        h["Content-Type"] = "application/json"
        body = json.dumps(body)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def first_step_after_post(port, csrf):
    """POST, then the event stream until its first step has ended (its `ok` line, as the
    CLI prints it); seconds from the POST."""
    t0 = time.perf_counter()
    status, req = request(port, "POST", "/api/v1/rehearsals", {"environment": "quick", "release": "v1"},
                          {"X-Rehearse-CSRF": csrf})
    assert status == 202, (status, req)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", f"/api/v1/requests/{req['id']}/events", headers={"X-Forwarded-User": "bench"})
    r = c.getresponse()
    first = None
    while True:
        line = r.fp.readline().decode()
        if not line:
            break
        if first is None and line.startswith("data: ") and "] ok " in line:
            first = time.perf_counter() - t0
        if line.startswith("event: end"):
            break
    c.close()
    return first


def cli_first_step(desc, env):
    t0 = time.perf_counter()
    p = subprocess.Popen([str(BIN), "run", str(desc)], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = None
    for line in p.stderr:
        if first is None and re.search(r"\] ok ", line):
            first = time.perf_counter() - t0
    p.wait()
    return first


def main():
    if not BIN.is_file():
        sys.exit("build first: cargo build --release")
    tmp = Path(tempfile.mkdtemp(prefix="rehearse-bench-serve-", dir="/tmp"))
    os.chmod(tmp, 0o711)
    envs = tmp / "environments"
    envs.mkdir()
    (tmp / "work").mkdir()
    os.chmod(tmp / "work", 0o711)
    desc = envs / "quick.yaml"
    desc.write_text(
        "name: quick\nprovider: local\nowner: bench@example.com\nrelease:\n  version: v1\n"
        f"  artifact: \"{ROOT}/demo/build/releases/v2\"\nbundle: []\n"
        "suites:\n  ok:\n    command: \"true\"\n    results: exit-code\n    timeout: 30s\n"
    )
    (tmp / "serve.yaml").write_text(
        f"environments: {envs}\nmax_running: 2\nchanges_per_minute: 1000\nproxy:\n  header: X-Forwarded-User\n  trusted: [127.0.0.1]\n"
        "rules:\n  \"*\": { rehearse: [\"*\"], max_per_user: 1000 }\n"
    )
    env = dict(os.environ, REHEARSE_STATE_DIR=str(tmp / "state"), REHEARSE_WORK_DIR=str(tmp / "work"), NO_COLOR="1")
    # The server's own start-up, in its row: spawn → "listening" (a state directory each).
    started = []
    for i in range(5):
        t0 = time.perf_counter()
        s = subprocess.Popen([str(BIN), "serve", "--config", str(tmp / "serve.yaml"), "--listen", "127.0.0.1:0"],
                             env=dict(env, REHEARSE_STATE_DIR=str(tmp / f"start-{i}")), stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
        s.stderr.readline()
        started.append(time.perf_counter() - t0)
        s.terminate()
        s.wait()
    server = subprocess.Popen([str(BIN), "serve", "--config", str(tmp / "serve.yaml"), "--listen", "127.0.0.1:0"],
                              env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = server.stderr.readline()
    port = int(line.strip().rsplit(":", 1)[1])
    try:
        _, session = request(port, "GET", "/api/v1/session")
        csrf = session["csrf"]
        # Interleaved: a request through the server, then the same run from the CLI.
        served, direct = [], []
        for i in range(N_LATENCY):
            served.append(first_step_after_post(port, csrf))
            direct.append(cli_first_step(desc, dict(env, REHEARSE_STATE_DIR=str(tmp / "cli-state"))))
            log(f"serve: {i + 1}/{N_LATENCY}: {served[-1] * 1000:.0f} ms through the server, {direct[-1] * 1000:.0f} ms from the CLI")
        # History: 100 finished runs in all.
        done = N_LATENCY
        while done < N_HISTORY:
            first_step_after_post(port, csrf)
            done += 1
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        _, listed = request(port, "GET", "/api/v1/requests")
        finished = sum(1 for r in listed["requests"] if r["state"]["state"] == "finished")
    finally:
        server.terminate()
        server.wait()
    ms = lambda xs: f"{min(xs) * 1000:.0f} / {statistics.median(xs) * 1000:.0f} / {max(xs) * 1000:.0f} ms"
    print(f"| What ({N_LATENCY} interleaved pairs, a slot free) | min / median / max |")
    print("|---|---|")
    print(f"| POST /api/v1/rehearsals → first step on the event stream | {ms(served)} |")
    print(f"| `rehearse run` of the same description: process start → first step line | {ms(direct)} |")
    print(f"| `rehearse serve` start-up (5 starts, once per server): process start → listening | {ms(started)} |")
    print()
    print(f"Server memory after {finished} finished runs in its history: VmRSS {rss:.1f} MiB, peak (VmHWM) {hwm:.1f} MiB.")


if __name__ == "__main__":
    main()
