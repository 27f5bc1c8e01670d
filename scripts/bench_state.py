#!/usr/bin/env python3
"""The shared state store's cost: S3 calls and added wall time per run of the full
rehearsal of environments/shop-aws.yaml against the moto emulator, with the state on
this machine (a fresh REHEARSE_STATE_DIR) and with `--state s3://rehearse-state/bench`,
in one run.

    python3 scripts/bench_state.py    # BENCH_STATE_REPS=10 repetitions by default

Environment: BENCH_STATE_REPS (repetitions, default 10); REHEARSE_BIN (the binary,
default target/release/rehearse); BENCH_STATE_LEASE (passed to both runs as
REHEARSE_LEASE; unset by default, so rehearse's default lease of 60 s, renewed every
20 s, applies).

Needs the binary and .venv (scripts/install-deps.sh --emulator) with moto and boto3.
Re-executes itself with the venv's Python. Every request goes to a moto_server on
127.0.0.1 started here (and stopped by PID at the end); credentials are dummies and no
AWS configuration file is read. The emulator, production's seed, the runnable
description and the leftovers check are scripts/bench_aws.py's, imported.

Equal work. Each repetition runs both variants, each on a freshly reset emulator
seeded with "production" (the S3 variant's bucket is created after the reset, before
its timer starts), the same binary and the same description; which variant goes first
alternates from one repetition to the next, after one unmeasured warm-up pair. Each run
is `rehearse run … --release v2 --format json` timed as a whole process (wall, and
user + sys from wait4); both must exit 0 with a passed verdict, restore the right
snapshot, leave no resource and leave production as it was. Calls are counted from
moto's request log: S3 requests are those whose path starts with /rehearse-state
(counted by HTTP method and by kind of key), EC2 and RDS requests are the others (which
must match between the variants). Afterwards the bucket is listed: journal records,
report and log files, connection details, and locks left (which must be none).

Prints a Markdown section and writes it to target/bench/state.md.
"""
import os, shutil, signal, statistics, subprocess, sys, tempfile, time
import json
from collections import Counter
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python3"
if Path(sys.prefix).resolve() != VENV.resolve() and VPY.is_file() and not os.environ.get("BENCH_STATE_REEXEC"):
    os.environ["BENCH_STATE_REEXEC"] = "1"
    os.execv(str(VPY), [str(VPY), str(Path(__file__).resolve()), *sys.argv[1:]])

if sys.argv[1:]:
    sys.exit(f"usage: {sys.argv[0]} (no arguments; see the environment variables in its docstring)")
# bench_aws re-executes itself with the venv's Python at import unless this is set (we
# already run there), and reads --trace / --serve from sys.argv (we take no arguments).
os.environ.setdefault("BENCH_AWS_REEXEC", "1")
sys.path.insert(0, str(SCRIPTS))
import bench_aws  # noqa: E402
from bench_aws import ANSI, Emulator, REQUEST_LINE, requests_since, settle, RELEASE, REGION, aws_env, clients, leftovers, machine_load  # noqa: E402
from bench_aws import production_state, seed, timed, variant  # noqa: E402
import boto3  # noqa: E402

BIN = Path(os.environ.get("REHEARSE_BIN") or ROOT / "target/release/rehearse")
if not BIN.is_absolute():
    BIN = ROOT / BIN
OUT = ROOT / "target/bench"
REPS = int(os.environ.get("BENCH_STATE_REPS", "10"))
LEASE = os.environ.get("BENCH_STATE_LEASE")
BUCKET, PREFIX = "rehearse-state", "bench"
STATE_URL = f"s3://{BUCKET}/{PREFIX}"
VARIANTS = ("local", "s3")
say, log, lines = bench_aws.say, bench_aws.log, bench_aws.lines


def command():
    env = [f"BENCH_STATE_REPS={REPS}"]
    if os.environ.get("REHEARSE_BIN"):
        env.append(f"REHEARSE_BIN={os.environ['REHEARSE_BIN']}")
    if LEASE:
        env.append(f"BENCH_STATE_LEASE={LEASE}")
    return " ".join(env + ["python3 scripts/bench_state.py"])


def s3_client(emu):
    s = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return s.client("s3", endpoint_url=emu.url)


def kind(path):
    """What an S3 request was about, from its path: `journal`, `report`, `logs`,
    `connection`, `lock`, `list` (a bucket-level GET) or `other`."""
    p = path.split("?", 1)[0]
    rest = p.removeprefix(f"/{BUCKET}").lstrip("/")
    if not rest.startswith(PREFIX + "/"):
        return "list" if "list-type" in path or rest in ("", PREFIX) else "other"
    rest = rest[len(PREFIX) + 1:]
    if rest.startswith("locks/"):
        return "lock"
    parts = rest.split("/")
    if parts[0] == "runs" and len(parts) >= 3:
        return {"journal": "journal", "report": "report", "logs": "logs", "connection.json": "connection"}.get(
            parts[2], "other")
    return "other"


def bucket_objects(s3):
    """Every key in the bucket with its size."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return out


def key_kind(key):
    return kind(f"/{BUCKET}/{key}")


def one_run(which, emu, ec2, rds, s3, base_env, tmp, tag):
    """One measured `rehearse run` on a freshly reset, reseeded emulator."""
    emu.reset()
    prod = seed(ec2, rds)
    if which == "s3":
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    before = production_state(ec2, rds)
    rdir = tmp / f"{tag}-{which}"
    rdir.mkdir()
    os.chmod(rdir, 0o711)
    variant(prod, rdir / "shop-aws.yaml")
    for d in ("state", "work"):
        (rdir / d).mkdir()
        os.chmod(rdir / d, 0o711)
    e = dict(base_env, REHEARSE_STATE_DIR=str(rdir / "state"), REHEARSE_WORK_DIR=str(rdir / "work"))
    for k in ("REHEARSE_LOG", "REHEARSE_STATE", "REHEARSE_LEASE", "REHEARSE_HOST"):
        e.pop(k, None)
    if LEASE:
        e["REHEARSE_LEASE"] = LEASE
    cmd = [str(BIN), "run", str(rdir / "shop-aws.yaml"), "--release", RELEASE, "--format", "json"]
    if which == "s3":
        cmd[2:2] = ["--state", STATE_URL]
    offset = settle(emu)
    wall, r = timed(cmd, e, ROOT)
    if r.returncode != 0:
        sys.exit(f"{tag} {which}: rehearse failed ({r.returncode}): {r.stderr}\n{r.stdout}")
    rep = json.loads(r.stdout)
    if rep.get("verdict") != "passed":
        sys.exit(f"{tag} {which}: rehearse's verdict: {rep.get('verdict')}: {r.stdout}")
    if (rep.get("backups") or [{}])[0].get("backup") != prod["newest_snapshot"]:
        sys.exit(f"{tag} {which}: rehearse restored {(rep.get('backups') or [{}])[0].get('backup')}")
    settle(emu)
    reqs = requests_since(emu, offset)
    s3_reqs = [(m, p, s) for m, p, s in reqs if p.startswith(f"/{BUCKET}")]
    other = len(reqs) - len(s3_reqs)
    ws = [s["duration_ms"] / 1000 for s in rep.get("steps", []) if s.get("resource") == "workspace"
          and s.get("action") == "destroy"]
    res = {"wall": wall, "cpu": r.cpu, "total": rep["total_ms"] / 1000, "api": other,
           "s3_methods": Counter(m for m, _, _ in s3_reqs), "s3_kinds": Counter((kind(p), m) for m, p, _ in s3_reqs),
           "s3_status": Counter(s for _, _, s in s3_reqs), "api_status": Counter(s for _, p, s in reqs
                                                                                 if not p.startswith(f"/{BUCKET}")),
           "workspace_destroy": ws[0] if ws else 0.0, "stderr": r.stderr.strip(),
           "work_left": (rdir / "work" / "runs" / rep["run_id"]).exists()}
    if which == "s3":
        objs = bucket_objects(s3)
        res["objects"] = Counter(key_kind(k) for k, _ in objs)
        res["bytes"] = Counter()
        for k, size in objs:
            res["bytes"][key_kind(k)] += size
        run_ids = {k.split("/")[2] for k, _ in objs if k.startswith(f"{PREFIX}/runs/")}
        if run_ids != {rep["run_id"]}:
            sys.exit(f"{tag} s3: the bucket holds runs {run_ids}, not {rep['run_id']}")
        if res["objects"]["lock"]:
            sys.exit(f"{tag} s3: locks left in the bucket: {[k for k, _ in objs if key_kind(k) == 'lock']}")
    elif s3_reqs:
        sys.exit(f"{tag} local: S3 requests from a run with local state")
    # The local journal, to compare with the records in the bucket.
    journal = rdir / "state" / "runs" / rep["run_id"] / "journal.jsonl"
    res["local_journal_lines"] = len(journal.read_text().splitlines()) if journal.is_file() else 0
    left = leftovers(ec2, rds)
    if left:
        sys.exit(f"{tag} {which}: left behind: {left}")
    if production_state(ec2, rds) != before:
        sys.exit(f"{tag} {which}: production changed")
    return res


def spread(xs, unit=1000, digits=0):
    f = lambda x: f"{x * unit:.{digits}f}"  # noqa: E731
    return f"{f(min(xs))} / **{f(statistics.median(xs))}** / {f(max(xs))}"


def rng(xs):
    xs = sorted(set(xs))
    return str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]}"


def report(results, loads, moto_version, binary_version):
    loc, s3r = results["local"], results["s3"]
    n = len(loc)
    col = lambda rs, k: [r[k] for r in rs]  # noqa: E731
    diff = [b["wall"] - a["wall"] for a, b in zip(loc, s3r)]
    dtot = [b["total"] - a["total"] for a, b in zip(loc, s3r)]
    dcpu = [b["cpu"] - a["cpu"] for a, b in zip(loc, s3r)]
    s3_total = [sum(r["s3_methods"].values()) for r in s3r]
    compilers = sum(1 for x in loads if x["rustc"] or x["cargo"])
    say("## Shared state on S3: calls and added wall time per run")
    say()
    say(f"`{command()}` ({time.strftime('%Y-%m-%d', time.gmtime())}, {loads[0]['at']}–{loads[-1]['at']}; "
        f"`{binary_version}`; moto {moto_version} on 127.0.0.1; {os.cpu_count()} cores; 1-minute load average "
        f"{min(x['load1'] for x in loads):.2f}–{max(x['load1'] for x in loads):.2f}, rustc or cargo running at "
        f"{compilers} of {len(loads)} samples). {n} repetitions of `rehearse run shop-aws.yaml --release {RELEASE} "
        f"--format json` (scripts/bench_aws.py's runnable variant of environments/shop-aws.yaml), each repetition "
        f"once with local state (a fresh `REHEARSE_STATE_DIR`) and once with `--state {STATE_URL}`, alternating "
        "which goes first, each on a freshly reset and reseeded emulator, after one unmeasured warm-up pair. Lease: "
        f"{'`REHEARSE_LEASE=' + LEASE + '`' if LEASE else 'the default (60 s, renewed every 20 s)'}. Every run exited "
        "0 with a passed verdict and left no resource and no lock. Times in ms: min / **median** / max.")
    say()
    say("| | local state | S3 state | added by S3 (per repetition: min / **median** / max of the differences) |")
    say("|---|--:|--:|--:|")
    say(f"| whole process, wall | {spread(col(loc, 'wall'))} | {spread(col(s3r, 'wall'))} | {spread(diff)} |")
    nw = lambda rs: [r["wall"] - r["workspace_destroy"] for r in rs]  # noqa: E731
    if statistics.median(col(loc + s3r, "workspace_destroy")) > 5:
        say(f"| whole process minus the `workspace` destroy step's wait (see below) | {spread(nw(loc))} | "
            f"{spread(nw(s3r))} | {spread([b - a for a, b in zip(nw(loc), nw(s3r))])} |")
    say(f"| the report's `total_ms` (the run from planning to the report; the lease, the final uploads and "
        f"process start/exit are outside it) | {spread(col(loc, 'total'))} | {spread(col(s3r, 'total'))} | "
        f"{spread(dtot)} |")
    say(f"| CPU, user + sys (wait4) | {spread(col(loc, 'cpu'))} | {spread(col(s3r, 'cpu'))} | {spread(dcpu)} |")
    say(f"| EC2 + RDS calls | {rng(col(loc, 'api'))} | {rng(col(s3r, 'api'))} | |")
    say(f"| S3 calls | 0 | {rng(s3_total)} | |")
    say()
    med_calls = statistics.median(s3_total)
    say(f"Added wall time per S3 call (median difference ÷ median calls): "
        f"{statistics.median(diff) * 1000 / med_calls:.1f} ms.")
    say()
    kinds = ("journal", "lock", "report", "logs", "connection", "list", "other")
    methods = sorted({m for r in s3r for m in r["s3_methods"]}, key=lambda m: ("PUT", "GET", "HEAD", "DELETE",
                                                                              "POST").index(m)
                     if m in ("PUT", "GET", "HEAD", "DELETE", "POST") else 9)
    say("S3 calls per run, by method and key (min–max over the runs; from moto's request log, paths under "
        f"`/{BUCKET}`):")
    say()
    say("| key | " + " | ".join(methods) + " |")
    say("|---|" + "--:|" * len(methods))
    for k in kinds:
        if not any(r["s3_kinds"].get((k, m)) for r in s3r for m in methods):
            continue
        label = {"journal": "`runs/RUN/journal/N.json`", "lock": "`locks/run.RUN.json` (the run's lease)",
                 "report": "`runs/RUN/report/…`", "logs": "`runs/RUN/logs/…`",
                 "connection": "`runs/RUN/connection.json`", "list": "bucket (listing)", "other": "other"}[k]
        say(f"| {label} | " + " | ".join(rng([r["s3_kinds"].get((k, m), 0) for r in s3r]) for m in methods) + " |")
    say("| **total** | " + " | ".join(f"**{rng([r['s3_methods'].get(m, 0) for r in s3r])}**" for m in methods)
        + " |")
    say()
    say("Objects in the bucket after each run (min–max; bytes are the median run's total per kind):")
    say()
    say("| kind | objects | bytes |")
    say("|---|--:|--:|")
    for k in ("journal", "report", "logs", "connection", "lock", "other"):
        objs = [r["objects"].get(k, 0) for r in s3r]
        if k not in ("journal", "lock") and not any(objs):
            continue
        say(f"| {k}{' (must be 0)' if k == 'lock' else ''} | {rng(objs)} | "
            f"{statistics.median(r['bytes'].get(k, 0) for r in s3r):.0f} |")
    say()
    lj = sorted({r["local_journal_lines"] for r in loc + s3r})
    puts_lock = [r["s3_kinds"].get(("lock", "PUT"), 0) for r in s3r]
    say(f"- Journal: {rng([r['objects'].get('journal', 0) for r in s3r])} records in S3 per run "
        f"(the local journal file has {rng(lj)} lines), each a `PUT` with `If-None-Match: *` that the step writing it "
        "waits for; one writer task sends them one at a time in journal order (src/engine/journal.rs), so the steps "
        "that run side by side queue behind each other's records.")
    renewals = [p - 1 for p in puts_lock]
    walls = col(s3r, "wall")
    every = f"a third of `REHEARSE_LEASE={LEASE}`" if LEASE else "20 s (a third of the default 60 s lease)"
    say(f"- Lease: {rng(puts_lock)} `PUT` of `locks/run.RUN.json` per run — the create (`If-None-Match: *`), then "
        f"{rng(renewals)} renewal(s) (`If-Match`), one due every {every}, in runs of "
        f"{min(walls):.1f}–{max(walls):.1f} s — and {rng([r['s3_kinds'].get(('lock', 'DELETE'), 0) for r in s3r])} "
        "`DELETE` (the release, `If-Match`). Renewals are off the critical path (a background task); a run "
        "adds one `PUT` per renewal interval it lasts.")
    odd = Counter()
    for r in s3r:
        odd.update({s: n for s, n in r["s3_status"].items() if not s.startswith("2")})
    if odd:
        say(f"- S3 answers other than 2xx, over all {n} runs: " + ", ".join(f"{n_} × {s}" for s, n_ in sorted(odd.items())))
    else:
        say(f"- Every S3 answer was a 2xx (no 404, no 412): nothing was read back or retried.")
    api_odd = Counter()
    for r in loc + s3r:
        api_odd.update({s: n for s, n in r["api_status"].items() if not s.startswith("2")})
    if api_odd:
        say("- EC2/RDS answers other than 2xx, over all runs: " + ", ".join(f"{n_} × {s}" for s, n_ in sorted(api_odd.items())))
    ws = col(loc + s3r, "workspace_destroy")
    if statistics.median(ws) > 5:
        say(f"- Both variants' wall time is dominated by the `workspace` resource's destroy step "
            f"({min(ws) * 1000:.0f}–{max(ws) * 1000:.0f} ms in the report): the AWS provider's `destroy_many` "
            "sends the local workspace entry through `destroy_entry`, which has no id for it and looks for it by tag "
            "for `UNJOURNALED_PATIENCE` (20 s) instead of removing the directory. It is the same in both variants, so "
            "the difference is unaffected; but it makes every run outlast the first lease renewal (20 s).")
    left = sum(1 for r in loc + s3r if r["work_left"])
    if left:
        say(f"- {left} of {len(loc + s3r)} runs left their work directory (`WORK/runs/RUN_ID`) behind.")
    warned = [r["stderr"] for r in s3r if "warning" in r["stderr"].lower()]
    if warned:
        say(f"- {len(warned)} S3 run(s) printed a warning, e.g.: `{warned[0].splitlines()[0]}`")
    say(f"- Pairs (local / S3 wall, ms): " + ", ".join(f"{a['wall'] * 1000:.0f} / {b['wall'] * 1000:.0f}"
                                                       for a, b in zip(loc, s3r)))
    say()


def main():
    for need, how in ((BIN, "cargo build --release (or set REHEARSE_BIN)"),
                      (bench_aws.MOTO, "scripts/install-deps.sh --emulator")):
        if not need.is_file():
            sys.exit(f"{need} is missing: {how}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    os.chmod(tmp, 0o711)
    emu = Emulator(tmp)
    env = aws_env(emu, tmp)
    env.pop("BENCH_STATE_REEXEC", None)
    ec2, rds = clients(emu)
    s3 = s3_client(emu)
    results = {v: [] for v in VARIANTS}
    loads = [machine_load()]
    moto_version = subprocess.run([str(VPY), "-c", "import moto; print(moto.__version__)"], capture_output=True,
                                  text=True).stdout.strip()
    binary_version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout.strip()
    try:
        # Warm-up, not measured: moto's first use of each operation (S3's included) is slow.
        for v in VARIANTS:
            one_run(v, emu, ec2, rds, s3, env, tmp, "warm-up")
        for rep in range(REPS):
            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
            for v in order:
                r = one_run(v, emu, ec2, rds, s3, env, tmp, f"rep{rep + 1}")
                results[v].append(r)
                log(f"rep {rep + 1}/{REPS} {v}: {r['wall']:.3f} s, {r['api']} EC2/RDS calls, "
                    f"{sum(r['s3_methods'].values())} S3 calls {dict(r['s3_methods'])}")
            loads.append(machine_load())
    finally:
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, loads, moto_version, binary_version)
    (OUT / "state.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
