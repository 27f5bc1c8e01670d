#!/usr/bin/env python3
"""A load tool of your own, as `compare.load.command` runs one (standard library only).

rehearse runs it once per environment, both at the same time, with:
  REHEARSE_URL       where the environment's target service answers
  REHEARSE_SIDE      baseline or candidate
  REHEARSE_RATE      requests a second
  REHEARSE_DURATION  seconds
  REHEARSE_RESULTS   the file to write: `ENDPOINT,LATENCY_MS,OK` a line (format: samples)

It replays the request file given as its argument (`METHOD PATH [BODY]` a line) on an
open-loop schedule: a request leaves at its time whether or not the last one answered
(there are workers for every request that can be in flight). Its latency counts from
when it is sent: Python threads sharing one interpreter add their own delays under
load, and counting from the schedule would charge those to the slower environment. A
5xx, a timeout (10 s), no connection or an answer of more than 64 MiB is an error, as
in rehearse's own replay.
"""
import concurrent.futures
import os
import sys
import time
import urllib.error
import urllib.request

env = os.environ
url = env["REHEARSE_URL"].rstrip("/")
rate = float(env["REHEARSE_RATE"])
duration = float(env["REHEARSE_DURATION"])
results = env["REHEARSE_RESULTS"]

requests = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            parts = line.split(None, 2)
            requests.append((parts[0].upper(), parts[1], parts[2] if len(parts) > 2 else None))


# The most of one answer read, as in rehearse's own replay: a bigger answer is an error
# of its request, and is never held whole in memory.
MAX_ANSWER = 64 << 20


def one(method, path, body):
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    sent = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            total = 0
            while chunk := r.read(64 * 1024):
                total += len(chunk)
                if total > MAX_ANSWER:
                    raise ValueError(f"an answer of more than {MAX_ANSWER >> 20} MiB")
            ok = r.status < 500
    except urllib.error.HTTPError as e:
        ok = e.code < 500
    except Exception:
        ok = False
    return f"{method} {path.split('?')[0]},{(time.perf_counter() - sent) * 1000:.3f},{int(ok)}"


count = int(rate * duration)
start = time.monotonic()
# Enough workers for every request that can be in flight (rate × the 10 s timeout).
with concurrent.futures.ThreadPoolExecutor(max_workers=min(1000, max(8, int(rate * 10) + 1))) as pool:
    futures = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(one, *requests[i % len(requests)]))
    lines = [f.result() for f in futures]
with open(results, "w") as out:
    out.write("endpoint,latency_ms,ok\n" + "\n".join(lines) + "\n")
