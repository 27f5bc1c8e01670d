#!/usr/bin/env python3
"""rehearse's benchmarks (make bench). Prints a Markdown report and writes it to
target/bench/results.md. Stdlib only.

1. plan: `cargo bench --bench plan` (200-resource description).
1b. fake: `cargo bench --bench fake_lifecycle` (the AWS lifecycle against the fake
   cloud on a paused clock; 50 concurrent runs under rate limits and faults).
2. demo overhead: the tool's own time in `rehearse run environments/demo.yaml`
   (total minus time waiting on PostgreSQL, the release's commands and the suites),
   beside the rehearse process's own CPU time (user + sys).
3. restore of a ~1 GB backup: rehearse cold (pg_restore -j) and warm (golden copy)
   beside raw `pg_restore -j2` and raw `cp -a` of the data directory, same machine,
   same server settings.
4. aws: the full lifecycle of
   environments/shop-aws.yaml against the moto emulator beside the same calls scripted
   with boto3 and with the `aws` CLI (scripts/bench_aws.py; needs .venv with moto,
   boto3 and awscli).
5. state: S3 calls and added wall time per run of the same lifecycle with the shared
   state store on S3 (`--state s3://…`) beside local state (scripts/bench_state.py;
   needs .venv with moto and boto3).
6. stage: a stage's switch, from a generation's acceptance passed to every stable name
   switched — `cargo bench --bench stage_switch` (the fakes with Route 53's propagation
   times) and `rehearse rebuild` against the emulator's Route 53 and S3
   (scripts/bench_stage.py).
7. serve: `rehearse serve`, a request's time from the POST to its run's first step on
   the event stream beside `rehearse run`'s own, and the server's memory after 100
   finished runs (scripts/bench_serve.py).
8. cow: copy-on-write copies against full copies of the same golden copy, at about
   1 GB and 10 GB (scripts/bench_cow.py; as root).
"""
import json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/rehearse"
OUT = ROOT / "target/bench"
REPS = int(os.environ.get("BENCH_REPS", "3"))
DEMO_REPS = int(os.environ.get("BENCH_DEMO_REPS", "10"))
SCALE = os.environ.get("BENCH_SCALE", "300")
lines = []


def say(s=""):
    print(s, flush=True)
    lines.append(s)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def rehearse(*args, env=None, work=None):
    e = dict(os.environ, NO_COLOR="1", REHEARSE_STATE_DIR=str(OUT / "state"), REHEARSE_WORK_DIR=str(work or OUT / "work"))
    e.update(env or {})
    return subprocess.run([str(BIN), *args], text=True, capture_output=True, env=e, cwd=ROOT)


def pg_bindir():
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return dirs[-1].parent


def as_pg_user():
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []


def settle():
    """Flush dirty pages so one measurement does not pay for the previous one's writes."""
    subprocess.run(["sync"], check=False)
    time.sleep(1)


def median(xs):
    return statistics.median(xs)


failed = []


def cargo_bench(name):
    """`cargo bench --bench NAME`; a failure is reported in the results (with the
    panic's lines) and makes the whole run exit non-zero at the end, after the other
    sections have run."""
    r = subprocess.run(["cargo", "bench", "--bench", name], cwd=ROOT, text=True, capture_output=True)
    if r.returncode != 0:
        failed.append(name)
        say(f"- **`cargo bench --bench {name}` failed** (exit {r.returncode}):")
        for l in r.stderr.splitlines():
            if "panicked" in l or "assertion" in l or l.strip().startswith(("left:", "right:")):
                say(f"  - {l.strip()}")
        return None
    return r


def section_plan():
    say("## plan, 200 resources")
    say()
    r = cargo_bench("plan")
    for l in (r.stdout.splitlines() if r else []):
        if "200 resources" in l:
            say(f"- {l}")
    say()


def bench_lines(name, bullet="- "):
    """`cargo bench --bench NAME`'s own lines (not the harness's), each said, then a blank line."""
    r = cargo_bench(name)
    for l in (r.stdout.splitlines() if r else []):
        if l.strip() and not l.startswith(("running", "test result")):
            say(f"{bullet}{l}")
    say()


def section_fake():
    say("## the AWS lifecycle against the fake cloud (virtual time)")
    say()
    bench_lines("fake_lifecycle")
    say("### a dry run's time to ready with a warm pool member, against the restore path (virtual time)")
    say()
    bench_lines("pool")


def section_sampler():
    say("## the lock sampler of a rehearsed deploy under the demo's load")
    say()
    # Its lines are a Markdown table: said as they are.
    bench_lines("lock_sampler", bullet="")


def section_proxy():
    say("## the fault proxy's own cost with no fault, on loopback")
    say()
    bench_lines("fault_proxy", bullet="")


def cpu_clock(pid):
    """The clock id of a process's CPU time (Linux's MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)): every thread of the process, never its children; nanoseconds."""
    return ((~pid) << 3) | 2


def measured(cmd, env, cwd):
    """Runs cmd to its end and returns (exit code, stdout, figures): its wall time, its
    own CPU time (user + sys of the process itself, all its threads, no child), read
    from the exited process before it is reaped (waitid with WNOWAIT keeps the zombie),
    its own user/sys split and its waited-for descendants' CPU time from /proc/PID/stat
    (clock ticks, 10 ms), and wait4's user + sys, which is the process plus every
    descendant it waited for."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wall = time.monotonic() - t
        own = time.clock_gettime_ns(cpu_clock(proc.pid)) / 1e9
        f = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        utime, stime, cutime, cstime = (int(x) / tick for x in f[11:15])
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        fig = {"wall": wall, "own_cpu": own, "own_user": utime, "own_sys": stime, "children_cpu": cutime + cstime,
               "wait4_cpu": ru.ru_utime + ru.ru_stime}
        return proc.returncode, out.read().decode(), err.read().decode(), fig


def section_demo():
    say("## the tool's own overhead on the demo (release v2)")
    say()
    run(["sh", "demo/backup/generate.sh"], cwd=ROOT)
    rows = []
    env = dict(os.environ, NO_COLOR="1", REHEARSE_STATE_DIR=str(OUT / "state"), REHEARSE_WORK_DIR=str(OUT / "work"))
    for _ in range(DEMO_REPS):
        code, out, err, fig = measured([str(BIN), "run", "environments/demo.yaml", "--release", "v2", "--format", "json"],
                                       env, ROOT)
        if code != 0:
            sys.exit(f"demo run failed: {err}")
        rep = json.loads(out)
        fig.update(total=rep["total_ms"] / 1000, overhead=rep["overhead_ms"] / 1000)
        rows.append(fig)
    col = lambda k: [r[k] * 1000 for r in rows]  # noqa: E731
    mmm = lambda k: f"{min(col(k)):.0f} / **{median(col(k)):.0f}** / {max(col(k)):.0f} ms"  # noqa: E731
    say(f"- `rehearse run environments/demo.yaml --release v2 --format json`, {DEMO_REPS} runs, as "
        f"{'root (the release runs as `rehearse`, the cluster as `rehearse-db`)' if os.geteuid() == 0 else 'this user'}; "
        f"1-minute load average {os.getloadavg()[0]:.2f} at the end. min / **median** / max:")
    say()
    say("| what | figure |")
    say("|---|--:|")
    say(f"| whole rehearsal, the report's `total_ms` | {mmm('total')} |")
    say(f"| rehearse's own time, the report's `overhead_ms` (target < 300 ms) | {mmm('overhead')} |")
    say(f"| the rehearse process's own CPU time, user + sys (all its threads, no child) | {mmm('own_cpu')} |")
    say(f"| … of which user / sys (clock ticks of 10 ms) | {median(col('own_user')):.0f} / {median(col('own_sys')):.0f} ms |")
    say(f"| CPU time of the descendants it waited for (PostgreSQL's tools, the release's commands, the suites) | {mmm('children_cpu')} |")
    say(f"| wait4's user + sys for the process (itself and those descendants) | {mmm('wait4_cpu')} |")
    say(f"| wall time of the process (start to exit) | {mmm('wall')} |")
    say()
    say("- runs, total / overhead / own CPU ms: " + ", ".join(
        f"{r['total'] * 1000:.0f} / {r['overhead'] * 1000:.0f} / {r['own_cpu'] * 1000:.0f}" for r in rows))
    say()


def newest_dump(d):
    best = None
    for f in sorted(d.glob("*.dump")):
        out = run([str(pg_bindir() / "pg_restore"), "-l", str(f)]).stdout
        t = next(l for l in out.splitlines() if l.startswith("; Archive created at"))
        if best is None or t > best[0]:
            best = (t, f)
    return best[1]


def raw_restore(dump, jobs=2):
    """initdb + start (same settings as rehearse) + pg_restore -jN: the restore alone
    and the whole sequence, timed."""
    b = pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="raw-", dir=OUT))
    os.chmod(base, 0o700)
    if os.geteuid() == 0:
        shutil.chown(base, "nobody", "nogroup")
    data = base / "data"
    port = 54000 + os.getpid() % 1000
    u = as_pg_user()
    try:
        settle()
        t_all = time.monotonic()
        run(u + [str(b / "initdb"), "-D", str(data), "-U", "rehearse", "--auth-local=trust", "-E", "UTF8", "--locale=C", "--no-sync"], cwd=base)
        opts = (f"-c listen_addresses='' -c port={port} -c unix_socket_directories='{base}' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB -c checkpoint_timeout=30min "
                "-c maintenance_work_mem=256MB -c wal_level=minimal -c max_wal_senders=0")
        run(u + [str(b / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w", "start"], cwd=base)
        run([str(b / "psql"), "-h", str(base), "-p", str(port), "-U", "rehearse", "-d", "postgres", "-c", "CREATE DATABASE shop"])
        t = time.monotonic()
        run([str(b / "pg_restore"), "-h", str(base), "-p", str(port), "-U", "rehearse", "-d", "shop", "--no-owner", "--no-acl", "-j", str(jobs), str(dump)])
        restore = time.monotonic() - t
        whole = time.monotonic() - t_all
        size = int(run(["du", "-sb", str(data)]).stdout.split()[0])
        return restore, whole, size
    finally:
        subprocess.run(u + [str(b / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def rehearse_ready(desc, cold, work=None):
    """`rehearse up` of a database-only description; returns (restore-or-copy step s,
    whole database resource s), then tears it down."""
    args = ["up", str(desc), "--format", "json"] + (["--cold"] if cold else [])
    settle()
    r = rehearse(*args, work=work)
    if r.returncode != 0:
        sys.exit(f"rehearse up failed: {r.stderr}")
    rep = json.loads(r.stdout)
    steps = [s for s in rep["steps"] if s["resource"] == "database.db"]
    key = "restore" if cold else "copy-golden"
    step = next(s for s in steps if s["action"] == key)["duration_ms"] / 1000
    ready = (max(s["start_ms"] + s["duration_ms"] for s in steps) - min(s["start_ms"] for s in steps)) / 1000
    d = rehearse("down", rep["run_id"], work=work)
    if d.returncode != 0:
        sys.exit(f"rehearse down failed: {d.stderr}")
    return step, ready


def section_restore():
    backups = OUT / "backups"
    say(f"## time to a ready copy of a ~1 GB backup (SHOP_SCALE={SCALE})")
    say()
    t = time.monotonic()
    run(["sh", "demo/backup/generate.sh"], cwd=ROOT, env=dict(os.environ, SHOP_SCALE=SCALE, SHOP_BACKUP_DIR=str(backups)))
    dump = newest_dump(backups)
    say(f"- backup: `{dump.name}`, {dump.stat().st_size / 1e9:.2f} GB archive (generated in {time.monotonic() - t:.0f} s, cached)")
    desc = OUT / "bench.yaml"
    desc.write_text(f"name: bench\nprovider: local\nowner: bench@example.com\nrelease:\n  version: v1\n  artifact: {ROOT}/demo/build/releases/v1\n"
                    f"databases:\n  db:\n    name: shop\n    source:\n      backup_dir: {backups}\n    timeout: 2h\n")
    fs = run(["stat", "-f", "-c", "%T", str(OUT)]).stdout.strip()
    raw_r, raw_whole, cold, cold_ready = [], [], [], []
    size = 0
    for _ in range(REPS):
        r, whole, size = raw_restore(dump)
        raw_r.append(r)
        raw_whole.append(whole)
        s, ready = rehearse_ready(desc, cold=True)
        cold.append(s)
        cold_ready.append(ready)
    say(f"- data directory after restore: {size / 1e9:.2f} GB; {os.cpu_count()} cores; median of {REPS} runs each, interleaved")
    say()
    say("| what | median | ratio |")
    say("|---|--:|--:|")
    say(f"| raw `pg_restore -j2` (initdb'd cluster, same server settings) | {median(raw_r):.2f} s | 1.00 |")
    say(f"| rehearse cold: its `pg_restore -j2` step | {median(cold):.2f} s | {median(cold) / median(raw_r):.2f} × raw |")
    say(f"| raw initdb + start + createdb + `pg_restore -j2` | {median(raw_whole):.2f} s | 1.00 |")
    say(f"| rehearse cold: whole copy ready (find backup, initdb, start, restore, password) | {median(cold_ready):.2f} s | {median(cold_ready) / median(raw_whole):.2f} × raw whole |")
    warm_rows(desc, OUT / "work", fs)
    say()


def warm_rows(desc, work, fs, reflink=False):
    """rehearse warm runs (full copies: the copy-on-write generations are the `cow`
    section's) beside raw copies of the same golden data directory."""
    w = rehearse("warm", str(desc), "--method", "copy", work=work)
    if w.returncode != 0:
        sys.exit(f"rehearse warm failed: {w.stderr}")
    golden = work / "golden" / "bench" / "db" / "data"
    raw_cp, raw_ref, warm, warm_ready = [], [], [], []
    for _ in range(REPS):
        for flag, acc in ((None, raw_cp), ("--reflink=always", raw_ref) if reflink else (None, None)):
            if acc is None:
                continue
            dest = work / "rawcopy"
            settle()
            t = time.monotonic()
            run(["cp", "-a"] + ([flag] if flag else []) + [str(golden), str(dest)])
            acc.append(time.monotonic() - t)
            shutil.rmtree(dest)
            subprocess.run(["sync"], check=False)
        s, ready = rehearse_ready(desc, cold=False, work=work)
        warm.append(s)
        warm_ready.append(ready)
    say(f"| raw `cp -a` of the golden data directory ({fs}) | {median(raw_cp):.2f} s | 1.00 |")
    if raw_ref:
        say(f"| raw `cp -a --reflink=always` ({fs}) | {median(raw_ref):.2f} s | {median(raw_ref) / median(raw_cp):.2f} × raw cp |")
    say(f"| rehearse warm ({fs}): its `cp -a --reflink=auto` step | {median(warm):.2f} s | {median(warm) / median(raw_cp):.2f} × raw cp |")
    say(f"| rehearse warm ({fs}): whole copy ready (copy, start, password) | {median(warm_ready):.2f} s | {median(warm_ready) / median(raw_cp):.2f} × raw cp |")


def section_script(script, what):
    """`script` prints its Markdown section on stdout (progress on stderr)."""
    r = subprocess.run([sys.executable, script], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"the {what} benchmark failed (see above)")
    for l in r.stdout.rstrip("\n").splitlines():
        say(l)
    say()


def section_aws():
    section_script("scripts/bench_aws.py", "AWS lifecycle")


def section_state():
    section_script("scripts/bench_state.py", "state store")


def section_stage():
    r = cargo_bench("stage_switch")
    for l in (r.stdout.splitlines() if r else []):
        if not l.startswith(("running", "test result")):
            say(l)
    say()
    section_script("scripts/bench_stage.py", "stage switch")


def section_serve():
    section_script("scripts/bench_serve.py", "serve")


def main():
    if not BIN.is_file():
        sys.exit("build first: cargo build --release")
    OUT.mkdir(parents=True, exist_ok=True)
    os.chmod(OUT, 0o711)
    for p in (OUT / "work",):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o711)
    say(f"# rehearse benchmarks — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores")
    say()
    only = sys.argv[1:] or ["plan", "fake", "demo", "restore", "aws", "state", "stage", "serve", "cow", "sampler", "proxy"]
    if "plan" in only:
        section_plan()
    if "fake" in only:
        section_fake()
    if "demo" in only:
        section_demo()
    if "restore" in only:
        section_restore()
    if "aws" in only:
        section_aws()
    if "state" in only:
        section_state()
    if "stage" in only:
        section_stage()
    if "serve" in only:
        section_serve()
    if "cow" in only:
        section_script("scripts/bench_cow.py", "copy-on-write")
    if "sampler" in only:
        section_sampler()
    if "proxy" in only:
        section_proxy()
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (see target/bench/results.md)")


if __name__ == "__main__":
    main()
