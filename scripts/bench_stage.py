#!/usr/bin/env python3
"""A stage's switch on AWS: the time from "the generation's acceptance suites passed"
to "every stable name switched", as `rehearse rebuild` reports it, for consecutive
rebuilds of environments/staging-aws.yaml against the moto emulator (Route 53 and S3
included), and the whole `rehearse rebuild` process's wall time for context, in one run.

    python3 scripts/bench_stage.py    # BENCH_STAGE_REPS=10 measured rebuilds by default

Environment: BENCH_STAGE_REPS (measured rebuilds, default 10; one unmeasured warm-up
rebuild comes first); REHEARSE_BIN (the binary; by default target/release/rehearse if
it is at least as new as every source file, else target/debug/rehearse, which is built
first with `cargo build` when it is missing or older than the sources; the output says
which).

Needs .venv (scripts/install-deps.sh --emulator) with moto and boto3. Re-executes
itself with the venv's Python. Every request goes to a moto_server on 127.0.0.1 started
here (and stopped by PID at the end); credentials are dummies and no AWS configuration
file is read. The emulator, production's seed, the leftovers check and the timing are
scripts/bench_aws.py's, imported.

The description is environments/staging-aws.yaml made runnable as tests/aws_emulator.rs
`staging_description` makes it: the emulator's network ids, a private hosted zone
`staging.shop.internal` created here (associated with production's VPC) in place of the
zone id, `state: s3://rehearse-stage/bench` (a bucket created here) in place of the
team's bucket, no masking, no health checks, and one exit-code suite that only checks
its environment (scripts/bench_aws.py's, so nothing is sent to the instances' 10.x
addresses). Its `stage:` section (record TTL 10 s) is kept as it is.

The work. One emulator, seeded once with "production"; then one unmeasured warm-up
`rehearse rebuild FILE --release v2 --drain 0s` (generation 1: nothing to replace) and
BENCH_STAGE_REPS measured ones in a row, each of which promotes a new generation and
retires the one before it (drain 0s). Each is timed as a whole process (wall, and user
+ sys from wait4), must exit 0, and must print the `every stable name switched … ms`
line, whose figure is read. After each: the zone's record sets (ListResourceRecordSets)
must point at exactly the new generation (its TXT record
`_rehearse-generation.db.staging.shop.internal.` says generation=N, the db CNAME is its
database's endpoint, the web A records its web instances' addresses), `rehearse stage
status` must agree (current = names_point_at = N, every earlier generation retired),
and only one generation's resources may exist. Requests are counted from moto's
request log: Route 53 (paths under /2013-04-01/, by operation), S3 (paths under the
bucket, by method and kind of key) and EC2 + RDS (the rest). At the end `rehearse stage
destroy staging` must leave no resource, only the zone's SOA and NS records, no stage
record in the bucket, and production as it was.

Prints a Markdown section and writes it to target/bench/stage.md.
"""
import os, re, shutil, signal, statistics, subprocess, sys, tempfile, time
import json
from collections import Counter
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python3"
if Path(sys.prefix).resolve() != VENV.resolve() and VPY.is_file() and not os.environ.get("BENCH_STAGE_REEXEC"):
    os.environ["BENCH_STAGE_REEXEC"] = "1"
    os.execv(str(VPY), [str(VPY), str(Path(__file__).resolve()), *sys.argv[1:]])

if sys.argv[1:]:
    sys.exit(f"usage: {sys.argv[0]} (no arguments; see the environment variables in its docstring)")
# bench_aws re-executes itself with the venv's Python at import unless this is set (we
# already run there), and reads --trace / --serve from sys.argv (we take no arguments).
os.environ.setdefault("BENCH_AWS_REEXEC", "1")
sys.path.insert(0, str(SCRIPTS))
import bench_aws  # noqa: E402
from bench_aws import ANSI, Emulator, REQUEST_LINE, RELEASE, REGION, SUITE, aws_env, clients, leftovers  # noqa: E402
from bench_aws import requests_since, runnable, settle  # noqa: E402
from bench_aws import machine_load, production_state, seed, timed  # noqa: E402
import boto3  # noqa: E402
import yaml  # noqa: E402

OUT = ROOT / "target/bench"
REPS = int(os.environ.get("BENCH_STAGE_REPS", "10"))
BUCKET, PREFIX = "rehearse-stage", "bench"
STATE_URL = f"s3://{BUCKET}/{PREFIX}"
STAGE, ZONE_NAME = "staging", "staging.shop.internal"
TXT_NAME = f"_rehearse-generation.db.{ZONE_NAME}."
DRAIN = "0s"
# The stage's line on stderr: `… now on generation N (release …): every stable name
# switched N ms after its acceptance passed` (the figure from the acceptance passed), or
# from binaries built before that wording, `… switched in N ms` (from the promotion
# written: the names' change only).
SWITCHED = re.compile(r"stage `(?P<stage>[^`]+)` now on generation (?P<gen>\d+) .*?every stable name switched "
                      r"(?:(?P<ms>\d+) ms after its acceptance passed|in (?P<ms_old>\d+) ms)")
say, log, lines = bench_aws.say, bench_aws.log, bench_aws.lines


def newest_source():
    """The newest modification time among the crate's sources."""
    paths = [ROOT / "Cargo.toml", ROOT / "Cargo.lock", ROOT / "build.rs"]
    paths += list((ROOT / "src").rglob("*"))
    return max(p.stat().st_mtime for p in paths if p.is_file())


def pick_binary():
    """The binary and how it was chosen (see the docstring)."""
    if os.environ.get("REHEARSE_BIN"):
        b = Path(os.environ["REHEARSE_BIN"])
        return (b if b.is_absolute() else ROOT / b), "chosen by `REHEARSE_BIN`"
    newest = newest_source()
    rel, dbg = ROOT / "target/release/rehearse", ROOT / "target/debug/rehearse"
    if rel.is_file() and rel.stat().st_mtime >= newest:
        return rel, "release build, newer than the sources"
    why = "missing" if not rel.is_file() else "older than the sources"
    if not dbg.is_file() or dbg.stat().st_mtime < newest:
        log("target/debug/rehearse is missing or older than the sources: cargo build")
        r = subprocess.run(["cargo", "build"], cwd=ROOT)
        if r.returncode != 0:
            sys.exit("cargo build failed")
    return dbg, f"debug build (`cargo build`): target/release/rehearse is {why}"


BIN, BIN_WHY = pick_binary()


def command():
    env = [f"BENCH_STAGE_REPS={REPS}"]
    if os.environ.get("REHEARSE_BIN"):
        env.append(f"REHEARSE_BIN={os.environ['REHEARSE_BIN']}")
    return " ".join(env + ["python3 scripts/bench_stage.py"])


def session():
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)


def r53_op(method, path):
    """The Route 53 operation of a request under /2013-04-01/, from its method and path."""
    p = path.split("?", 1)[0].removeprefix("/2013-04-01/")
    parts = p.split("/")
    if parts[0] == "change":
        return "GetChange"
    if parts[0] == "hostedzone" and len(parts) >= 3 and parts[2] == "rrset":
        return "ChangeResourceRecordSets" if method == "POST" else "ListResourceRecordSets"
    if parts[0] == "hostedzone" and len(parts) == 2:
        return {"GET": "GetHostedZone", "DELETE": "DeleteHostedZone"}.get(method, f"{method} hostedzone")
    if parts[0] == "hostedzone" and len(parts) == 1:
        return "ListHostedZones" if method == "GET" else "CreateHostedZone"
    return f"{method} {parts[0]}"


def s3_kind(path):
    """What an S3 request was about, from its path: `stage` (the stage's record),
    `secret` (the stage's password), `stage lock`, `run lock`, `journal`, `report`,
    `logs`, `connection`, `list` or the first part of the key."""
    p = path.split("?", 1)[0]
    rest = p.removeprefix(f"/{BUCKET}").lstrip("/")
    if not rest.startswith(PREFIX + "/"):
        return "list" if "list-type" in path or rest in ("", PREFIX) else "other"
    rest = rest[len(PREFIX) + 1:]
    parts = rest.split("/")
    if parts[0] == "locks":
        return "stage lock" if "stage" in parts[-1] else "run lock"
    if parts[0] == "stages":
        return {"stage.json": "stage", "secret.json": "secret"}.get(parts[-1], "stages: other")
    if parts[0] == "runs" and len(parts) >= 3:
        return {"journal": "journal", "report": "report", "logs": "logs", "connection.json": "connection"}.get(
            parts[2], "run: other")
    return parts[0] or "other"


def bucket_keys(s3, prefix=""):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def ttl_seconds(s):
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h)", str(s).strip())
    if not m:
        sys.exit(f"record_ttl {s!r}: not understood")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def description(prod, zone, path: Path):
    """environments/staging-aws.yaml with the emulator's ids, its zone and bucket, no
    masking, no health checks and one suite that only checks its environment, as
    tests/aws_emulator.rs `staging_description` builds it (the suite is bench_aws.py's)."""
    text = runnable("staging-aws.yaml", prod, [("Z0123456789ABCDEFGHIJ", zone), ("s3://acme-rehearse/shop", STATE_URL)])
    desc = yaml.safe_load(text)
    assert desc.get("state") == STATE_URL and desc["stage"]["zone"] == zone, text
    assert desc["stage"]["name"] == STAGE and list(desc["suites"]) == ["endpoints"], text
    path.write_text(text)
    return desc


def zone_records(r53, zone):
    """The zone's record sets other than SOA and NS, as {(name, type): [values]}."""
    out = {}
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone):
        for s in page["ResourceRecordSets"]:
            if s["Type"] not in ("SOA", "NS"):
                out[(s["Name"], s["Type"])] = sorted(r["Value"] for r in s.get("ResourceRecords", []))
    return out


def zone_types(r53, zone):
    types = []
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone):
        types += [s["Type"] for s in page["ResourceRecordSets"]]
    return sorted(types)


def generation_addresses(ec2, rds, run_id):
    """Generation `run_id`'s database endpoint and its running web instances' private
    addresses, as the cloud has them."""
    tagged = lambda tags, k, v: any(t["Key"] == k and t["Value"] == v for t in tags or [])  # noqa: E731
    dbs = [d for d in rds.describe_db_instances()["DBInstances"] if tagged(d.get("TagList"), "rehearse:run-id", run_id)]
    if len(dbs) != 1:
        sys.exit(f"generation {run_id}: {len(dbs)} databases")
    ips = []
    for r in ec2.describe_instances(Filters=[{"Name": "tag:rehearse:run-id", "Values": [run_id]}])["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] == "running" and any(t["Value"].startswith("service.web.") for t in i.get("Tags", [])):
                ips.append(i["PrivateIpAddress"])
    return dbs[0]["Endpoint"]["Address"], sorted(ips)


def stage_status(env):
    r = subprocess.run([str(BIN), "--format", "json", "stage", "status", STAGE], env=dict(env, REHEARSE_STATE=STATE_URL),
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"rehearse stage status failed ({r.returncode}): {r.stderr}")
    return json.loads(r.stdout)


def check_generation(n, r53, zone, ec2, rds, env, tag):
    """The zone, the stage's record and the cloud after the rebuild that made generation n."""
    s = stage_status(env)
    if (s["stage"].get("current"), s.get("names_point_at")) != (n, n):
        sys.exit(f"{tag}: stage status says current {s['stage'].get('current')}, names at "
                 f"{s.get('names_point_at')}, not {n}: {s}")
    gens = s["stage"]["generations"]
    run_id = next(g["run_id"] for g in gens if g["number"] == n)
    fates = [g["fate"] for g in gens]
    if fates != ["retired"] * (len(gens) - 1) + ["current"]:
        sys.exit(f"{tag}: generations' fates {fates}")
    endpoint, ips = generation_addresses(ec2, rds, run_id)
    want = {(TXT_NAME, "TXT"): [f'"generation={n}"'], (f"db.{ZONE_NAME}.", "CNAME"): [endpoint],
            (f"web.{ZONE_NAME}.", "A"): ips}
    got = zone_records(r53, zone)
    if got != want:
        sys.exit(f"{tag}: the zone's records {got}, not {want}")
    return run_id


def one_rebuild(n, emu, r53, zone, ec2, rds, env, file, tag):
    """The rebuild that makes generation n, timed as a whole process, then checked."""
    cmd = [str(BIN), "rebuild", str(file), "--release", RELEASE, "--drain", DRAIN]
    offset = settle(emu)
    wall, r = timed(cmd, env, ROOT)
    if r.returncode != 0:
        sys.exit(f"{tag}: rehearse rebuild failed ({r.returncode}): {r.stderr}\n{r.stdout}")
    m = SWITCHED.search(r.stderr)
    if not m:
        sys.exit(f"{tag}: no `every stable name switched … ms` line on stderr: {r.stderr}")
    if (m["stage"], int(m["gen"])) != (STAGE, n):
        sys.exit(f"{tag}: stage `{m['stage']}` now on generation {m['gen']}, not `{STAGE}` on {n}")
    settle(emu)
    reqs = requests_since(emu, offset)
    r53_reqs = [(mt, p, s) for mt, p, s in reqs if p.startswith("/2013-04-01/")]
    s3_reqs = [(mt, p, s) for mt, p, s in reqs if p.startswith(f"/{BUCKET}")]
    run_id = check_generation(n, r53, zone, ec2, rds, env, tag)
    left = leftovers(ec2, rds)
    return {"gen": n, "run_id": run_id, "wall": wall, "cpu": r.cpu,
            "switch": int(m["ms"] or m["ms_old"]) / 1000, "wording": "new" if m["ms"] else "old",
            "line": m.group(0), "left": len(left),
            "r53": Counter(r53_op(mt, p) for mt, p, _ in r53_reqs),
            "s3": Counter((s3_kind(p), mt) for mt, p, _ in s3_reqs),
            "api": len(reqs) - len(r53_reqs) - len(s3_reqs),
            "odd": Counter(odd_label(mt, p, s) for mt, p, s in reqs if not s.startswith("2")),
            "warned": [l for l in r.stderr.splitlines() if "warning" in l.lower()]}


def odd_label(method, path, status):
    """A request answered other than 2xx, for the report: service, method, what, status."""
    if path.startswith("/2013-04-01/"):
        return f"Route 53 {r53_op(method, path)} {status}"
    if path.startswith(f"/{BUCKET}"):
        return f"S3 {method} {s3_kind(path)} {status}"
    return f"EC2/RDS {method} {status}"


def spread(xs, unit=1000, digits=0):
    f = lambda x: f"{x * unit:.{digits}f}"  # noqa: E731
    return f"{f(min(xs))} / **{f(statistics.median(xs))}** / {f(max(xs))}"


def rng(xs):
    xs = sorted(set(xs))
    return str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]}"


def report(results, warm, final, loads, moto_version, binary_version, ttl):
    n = len(results)
    col = lambda k: [r[k] for r in results]  # noqa: E731
    sw, wall = col("switch"), col("wall")
    new = all(r["wording"] == "new" for r in results)
    target = ttl + 5
    compilers = sum(1 for x in loads if x["rustc"] or x["cargo"])
    say("## A stage's switch on AWS: from acceptance passed to every stable name switched")
    say()
    say(f"`{command()}` ({time.strftime('%Y-%m-%d', time.gmtime())}, {loads[0]['at']}–{loads[-1]['at']}; "
        f"`{binary_version}`, {BIN_WHY}; moto {moto_version} on 127.0.0.1; {os.cpu_count()} cores; 1-minute load "
        f"average {min(x['load1'] for x in loads):.2f}–{max(x['load1'] for x in loads):.2f}, rustc or cargo running "
        f"at {compilers} of {len(loads)} samples). One emulator seeded once with production; one unmeasured warm-up "
        f"`rehearse rebuild staging-aws.yaml --release {RELEASE} --drain {DRAIN}` (generation {warm['gen']}), then "
        f"{n} measured rebuilds in a row (generations {results[0]['gen']}–{results[-1]['gen']}), each promoting a new "
        "generation and retiring the one before it. The description is environments/staging-aws.yaml with the "
        f"emulator's ids, a private hosted zone `{ZONE_NAME}` made in moto, `state: {STATE_URL}` and one suite that "
        "checks its environment. Every rebuild exited 0; after each, the zone's records pointed at exactly the new "
        "generation (TXT, db CNAME, web A records checked against the cloud), `stage status` agreed and only one "
        "generation's resources existed. Times in ms: min / **median** / max.")
    say()
    say("| | min / **median** / max |")
    say("|---|--:|")
    if new:
        what = ("switch: the `every stable name switched N ms after its acceptance passed` figure (the promotion's "
                "compare-and-swap write of the stage record to S3, one Route 53 ChangeResourceRecordSets batch, "
                "GetChange until INSYNC, and the reads between)")
    else:
        what = ("switch: the `every stable name switched in N ms` figure of this binary, which is timed **from the "
                "promotion written** (the names' change batch, GetChange until INSYNC and the reads): the "
                "compare-and-swap write of the stage record to S3 is **not** in it")
    say(f"| {what} | {spread(sw)} |")
    say(f"| whole `rehearse rebuild` process, wall (build, acceptance, switch, retiring the previous generation) | "
        f"{spread(wall)} |")
    say(f"| whole process, CPU user + sys (wait4) | {spread(col('cpu'))} |")
    say()
    met = max(sw) <= target
    say(f"Record TTL (the description's `stage.record_ttl`): {ttl:g} s. Target: switch ≤ record TTL + 5 s = "
        f"{target:g} s — **{'met' if met else 'not met'}** (slowest of {n}: {max(sw) * 1000:.0f} ms). moto answers "
        "a change INSYNC at once, so this measures rehearse's side and the emulator, not Route 53's propagation "
        "(which on AWS usually takes tens of seconds).")
    if not new:
        say()
        say("- This binary predates the figure's redefinition (`… switched N ms after its acceptance passed`, timed "
            "from the acceptance passed); with it the row above would also include the stage record's "
            "compare-and-swap `PUT` to S3.")
    say()
    ops = []
    for r in results:
        ops += [o for o in r["r53"] if o not in ops]
    say("Requests per measured rebuild (min–max over the rebuilds; from moto's request log, the whole process):")
    say()
    say("| service | request | per rebuild |")
    say("|---|---|--:|")
    for o in ops:
        say(f"| Route 53 | {o} | {rng([r['r53'].get(o, 0) for r in results])} |")
    say(f"| Route 53 | **total** | **{rng([sum(r['r53'].values()) for r in results])}** |")
    kinds = []
    for r in results:
        kinds += [k for k in r["s3"] if k not in kinds]
    labels = {"stage": f"`stages/{STAGE}/stage.json` (the stage record)",
              "secret": f"`stages/{STAGE}/secret.json` (the stage's password)",
              "stage lock": f"`locks/stage.{STAGE}.json` (the stage's lock)",
              "run lock": "`locks/run.RUN.json` (the generation's run lease)",
              "journal": "`runs/RUN/journal/N.json`", "report": "`runs/RUN/report/…`", "logs": "`runs/RUN/logs/…`",
              "connection": "`runs/RUN/connection.json`", "list": "bucket (listing)"}
    order = list(labels) + sorted({k for k, _ in kinds} - set(labels))
    methods = ("PUT", "GET", "HEAD", "DELETE", "POST")
    for k, m in sorted(kinds, key=lambda km: (order.index(km[0]), methods.index(km[1]) if km[1] in methods else 9)):
        say(f"| S3 | {m} {labels.get(k, k)} | {rng([r['s3'].get((k, m), 0) for r in results])} |")
    say(f"| S3 | **total** | **{rng([sum(r['s3'].values()) for r in results])}** |")
    say(f"| EC2 + RDS | total | {rng(col('api'))} |")
    say()
    odd = sorted({k for r in results for k in r["odd"]})
    if odd:
        say("- Answers other than 2xx, per measured rebuild (min–max): "
            + ", ".join(f"{rng([r['odd'].get(k, 0) for r in results])} × {k}" for k in odd) + ".")
    else:
        say(f"- Every answer over the {n} measured rebuilds was a 2xx.")
    warned = [w for r in results for w in r["warned"]]
    if warned:
        say(f"- {len(warned)} warning line(s) on the rebuilds' stderr, e.g.: `{warned[0]}`")
    say(f"- Resources left after each rebuild (bench_aws.py's leftovers check: one generation's): {rng(col('left'))}. "
        f"`rehearse stage destroy {STAGE}` ({final['destroy_wall'] * 1000:.0f} ms) then left no resource, only the "
        f"zone's {' and '.join(final['zone_types'])} records, {final['stage_keys']} stage key(s) in the bucket, and "
        "production as it was.")
    say(f"- Warm-up (generation {warm['gen']}, not measured): switch {warm['switch'] * 1000:.0f} ms, whole process "
        f"{warm['wall'] * 1000:.0f} ms.")
    say("- Per rebuild (switch / whole process, ms): " + ", ".join(
        f"{r['switch'] * 1000:.0f} / {r['wall'] * 1000:.0f}" for r in results))
    say()


def main():
    for need, how in ((BIN, "cargo build (or set REHEARSE_BIN)"),
                      (bench_aws.MOTO, "scripts/install-deps.sh --emulator")):
        if not need.is_file():
            sys.exit(f"{need} is missing: {how}")
    if REPS < 1:
        sys.exit("BENCH_STAGE_REPS must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    os.chmod(tmp, 0o711)
    emu = Emulator(tmp)
    base = aws_env(emu, tmp)
    base.pop("BENCH_STAGE_REEXEC", None)
    for k in ("REHEARSE_LOG", "REHEARSE_STATE", "REHEARSE_LEASE", "REHEARSE_HOST"):
        base.pop(k, None)
    for d in ("state", "work"):
        (tmp / d).mkdir()
        os.chmod(tmp / d, 0o711)
    env = dict(base, REHEARSE_STATE_DIR=str(tmp / "state"), REHEARSE_WORK_DIR=str(tmp / "work"))
    ec2, rds = clients(emu)
    s = session()
    s3, r53 = s.client("s3", endpoint_url=emu.url), s.client("route53", endpoint_url=emu.url)
    loads = [machine_load()]
    moto_version = subprocess.run([str(VPY), "-c", "import moto; print(moto.__version__)"], capture_output=True,
                                  text=True).stdout.strip()
    binary_version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout.strip()
    results = []
    try:
        emu.reset()
        prod = seed(ec2, rds)
        before = production_state(ec2, rds)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        zone = r53.create_hosted_zone(
            Name=ZONE_NAME, CallerReference=f"bench-stage-{time.time_ns()}",
            VPC={"VPCRegion": REGION, "VPCId": prod["vpc"]}, HostedZoneConfig={"PrivateZone": True},
        )["HostedZone"]["Id"].removeprefix("/hostedzone/")
        file = tmp / "staging-aws.yaml"
        desc = description(prod, zone, file)
        ttl = ttl_seconds(desc["stage"]["record_ttl"])
        log(f"binary: {BIN} ({BIN_WHY}); zone {zone}; state {STATE_URL}")
        # Warm-up, not measured: generation 1 (nothing to replace), and moto's first use
        # of each operation.
        warm = one_rebuild(1, emu, r53, zone, ec2, rds, env, file, "warm-up")
        log(f"warm-up: {warm['line']} ({warm['wall']:.3f} s)")
        for i in range(REPS):
            r = one_rebuild(i + 2, emu, r53, zone, ec2, rds, env, file, f"rebuild {i + 1}")
            results.append(r)
            log(f"rebuild {i + 1}/{REPS}: generation {r['gen']}: switch {r['switch'] * 1000:.0f} ms, whole process "
                f"{r['wall']:.3f} s; Route 53 {dict(r['r53'])}; S3 {sum(r['s3'].values())}; EC2+RDS {r['api']}")
            loads.append(machine_load())
        dwall, d = timed([str(BIN), "stage", "destroy", STAGE], dict(env, REHEARSE_STATE=STATE_URL), ROOT)
        if d.returncode != 0:
            sys.exit(f"rehearse stage destroy failed ({d.returncode}): {d.stderr}\n{d.stdout}")
        left = leftovers(ec2, rds)
        if left:
            sys.exit(f"left behind after stage destroy: {left}")
        types = zone_types(r53, zone)
        if set(types) != {"SOA", "NS"}:
            sys.exit(f"the zone still holds {types} after stage destroy: {zone_records(r53, zone)}")
        stage_keys = bucket_keys(s3, f"{PREFIX}/stages/")
        if stage_keys:
            sys.exit(f"stage keys left in the bucket: {stage_keys}")
        if production_state(ec2, rds) != before:
            sys.exit("production changed")
        final = {"destroy_wall": dwall, "zone_types": sorted(set(types)), "stage_keys": len(stage_keys)}
    finally:
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, warm, final, loads, moto_version, binary_version, ttl)
    (OUT / "stage.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
