#!/usr/bin/env python3
"""The AWS lifecycle benchmark: wall time, CPU time and API calls of the full rehearsal
of environments/shop-aws.yaml against the moto emulator, beside the same calls scripted
with boto3 (one process) and with the `aws` CLI (one process per call), in one run.

    python3 scripts/bench_aws.py          # BENCH_AWS_REPS=10 repetitions by default
    python3 scripts/bench_aws.py --trace  # one run each through a timestamping relay:
                                          # every call's time, written to target/bench/aws-trace.md
    python3 scripts/bench_aws.py --serve  # a seeded emulator left running, and the commands
                                          # to time the approaches from outside (Ctrl-C stops it)

Needs target/release/rehearse and .venv (scripts/install-deps.sh --emulator) with
boto3 and awscli (`.venv/bin/pip install awscli`). Re-executes itself with the venv's
Python. Every request goes to a moto_server on 127.0.0.1 started here (and stopped by
PID at the end); credentials are dummies and no AWS configuration file is read.

Equal work. Both scripts make rehearse's calls with rehearse's concurrency: the steps
of its plan that are independent run side by side (threads in a ThreadPoolExecutor for
boto3, background jobs for the CLI), each as soon as what it depends on is done; the
instances' and the database's waits go through one batched poller per kind, as
rehearse's do. Same guard describes; same polling (first describe 100 ms after a change,
doubling up to 10 s: rehearse's POLL_FIRST and POLL_MAX, which it cannot be told to
change, so the floor it puts under the emulator's figures is paid by both sides and
subtracted from both); the same two ingress calls (TCP to the services' ports once the
group exists, TCP to the copy's port only once the copy has the run's password); and,
like rehearse's SDK, one attempt per call (no retries by boto3 or the CLI). The boto3
script builds its clients before its lifecycle timer starts and reports the import, the
clients and the lifecycle separately; process start-up is measured on its own
(`rehearse --version` against an interpreter that imports boto3 and builds the two
clients). The scripts are written to target/bench/aws/ so they can be read and rerun.
Each script's calls are compared with rehearse's (the same calls; no order that
rehearse kept in all its runs reversed) and any difference is printed.

For each repetition: the start-up pairs, then each approach (in an order that rotates
from one repetition to the next) on a freshly reset emulator seeded with "production"
as tests/aws_emulator.rs seeds it, timed as a whole process (wall, and user + sys from
wait4), its requests counted from moto's request log and named by its recorder.

Prints a Markdown section and writes it to target/bench/aws.md.
"""
import base64, json, os, re, secrets, shlex, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import types
import urllib.parse, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python3"
if Path(sys.prefix).resolve() != VENV.resolve() and VPY.is_file() and not os.environ.get("BENCH_AWS_REEXEC"):
    os.environ["BENCH_AWS_REEXEC"] = "1"
    os.execv(str(VPY), [str(VPY), str(Path(__file__).resolve()), *sys.argv[1:]])

import boto3  # noqa: E402
import yaml  # noqa: E402
from botocore.config import Config  # noqa: E402

BIN = ROOT / "target/release/rehearse"
OUT = ROOT / "target/bench"
WORK = OUT / "aws"
MOTO = VENV / "bin/moto_server"
AWS = VENV / "bin/aws"
TRACE = "--trace" in sys.argv[1:]
SERVE = "--serve" in sys.argv[1:]
REPS = 1 if TRACE else int(os.environ.get("BENCH_AWS_REPS", "10"))
# Start-up pairs (`rehearse --version`, boto3's interpreter + import + clients) per repetition.
STARTUP_PER_REP = int(os.environ.get("BENCH_AWS_STARTUP", "3"))
# The polling sleeps on rehearse's critical path: the database's two waits, the
# instances' wait, then the instances' and the database's teardown waits side by side;
# the first describe of each comes POLL_FIRST (100 ms) after the change.
FLOOR_SLEEPS, POLL_FIRST_MS = 4, 100
REGION = "eu-west-1"
RELEASE = "v2"
SUITE = 'test -n "$SHOP_URL" && test -n "$DATABASE_URL" && test -n "$REHEARSE_SERVICE_WORKER_URL"'
COMMAND = "python3 scripts/bench_aws.py"
REQUEST_LINE = re.compile(r'"(GET|POST|PUT|DELETE|HEAD|PATCH) (\S+) HTTP/[0-9.]+" \d{3}')
# werkzeug colours the request line of every answer but a 200 (a 204 DeleteObject, a
# 404 GetObject, a 412): `"\x1b[35m\x1b[1mDELETE /… HTTP/1.1\x1b[0m" 204`; the colour
# codes are taken out before matching.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
lines = []


def say(s=""):
    print(s, flush=True)
    lines.append(s)


def log(s):
    print(s, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- emulator

class Emulator:
    """moto_server on a free loopback port; its request log counts API calls, its
    recorder (turned on per approach) names them."""

    def __init__(self, tmp: Path):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "moto.log"
        self.recording = tmp / "moto-recording.jsonl"
        self.log_file = open(self.log_path, "w")
        env = dict(os.environ, MOTO_RECORDER_FILEPATH=str(self.recording))
        self.proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log_file, stderr=self.log_file, env=env, cwd=tmp)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    sys.exit(f"moto did not start: {self.log_path.read_text()}")
                time.sleep(0.05)

    def post(self, path):
        urllib.request.urlopen(urllib.request.Request(self.url + path, data=b"", method="POST"), timeout=30).read()

    def reset(self):
        self.post("/moto-api/reset")

    def api_requests(self):
        """Requests logged so far, moto's own /moto-api/ calls excluded."""
        n = 0
        with open(self.log_path, errors="replace") as f:
            for l in f:
                m = REQUEST_LINE.search(ANSI.sub("", l))
                if m and not m.group(2).startswith("/moto-api/"):
                    n += 1
        return n

    def settled_count(self):
        """The request count once the log has stopped growing (a line is written just
        after its response is sent)."""
        last, stable_since = -1, time.monotonic()
        while True:
            n = self.api_requests()
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                return n
            time.sleep(0.05)

    def start_recording(self):
        self.post("/moto-api/recorder/reset-recording")
        self.post("/moto-api/recorder/start-recording")

    def stop_recording(self):
        """The operations recorded since start_recording, in order."""
        self.post("/moto-api/recorder/stop-recording")
        ops = []
        for row in self.recording.read_text().splitlines():
            e = json.loads(row)
            body = e.get("body") or ""
            if e.get("body_encoded"):
                body = base64.b64decode(body).decode("utf-8", "replace")
            q = urllib.parse.parse_qs(body) if isinstance(body, str) else {}
            q.update(urllib.parse.parse_qs(urllib.parse.urlparse(e.get("url", "")).query))
            action = (q.get("Action") or [None])[0]
            if not action:
                target = {k.lower(): v for k, v in (e.get("headers") or {}).items()}.get("x-amz-target", "?")
                action = target.rsplit(".", 1)[-1]
            if action == "AuthorizeSecurityGroupIngress":
                action += " " + ingress_label(q)
            ops.append(action)
        return ops

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def ingress_label(q):
    """What an AuthorizeSecurityGroupIngress opens, from its query parameters: e.g.
    `(tcp 8080 from 1 CIDR + group)`, one part per IpPermission."""
    parts, i = [], 1
    while f"IpPermissions.{i}.IpProtocol" in q:
        k = f"IpPermissions.{i}."
        proto = q[k + "IpProtocol"][0]
        ports = q.get(k + "FromPort", ["*"])[0]
        if q.get(k + "ToPort", [ports])[0] != ports:
            ports += "-" + q[k + "ToPort"][0]
        cidrs = sum(1 for key in q if key.startswith(k + "IpRanges.") and key.endswith(".CidrIp"))
        groups = sum(1 for key in q if key.startswith(k + "Groups.") and key.endswith(".GroupId"))
        src = [f"{cidrs} CIDR"] if cidrs else []
        src += ["group"] if groups == 1 else [f"{groups} groups"] if groups else []
        parts.append(f"{proto} {ports} from {' + '.join(src) or 'nothing'}")
        i += 1
    return "(" + "; ".join(parts) + ")"


def aws_env(emu: Emulator, tmp: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("BENCH_AWS_REEXEC",)}
    env.update(
        AWS_ENDPOINT_URL=emu.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
        NO_COLOR="1",
    )
    return env


# --------------------------------------------------------------------------- production

def clients(emu: Emulator):
    s = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return s.client("ec2", endpoint_url=emu.url), s.client("rds", endpoint_url=emu.url)


def seed(ec2, rds):
    """Production as tests/aws_emulator.rs `seed` builds it."""
    ami = next(i["ImageId"] for i in ec2.describe_images()["Images"])
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i + 1}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
        for i, az in enumerate(["eu-west-1a", "eu-west-1b"])
    ]
    sg = ec2.create_security_group(
        GroupName="shop-prod", Description="production web", VpcId=vpc,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "env", "Value": "production"}]}],
    )["GroupId"]
    ec2.run_instances(
        ImageId=ami, InstanceType="t3.small", MinCount=1, MaxCount=1, SubnetId=subnets[0], SecurityGroupIds=[sg],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "shop-prod-web"}]}],
    )
    rds.create_db_subnet_group(DBSubnetGroupName="shop-prod-subnets", DBSubnetGroupDescription="production",
                               SubnetIds=subnets)
    for ident, protect in [("shop-prod-db", True), ("analytics-db", False)]:
        rds.create_db_instance(
            DBInstanceIdentifier=ident, Engine="postgres", DBInstanceClass="db.t3.medium", AllocatedStorage=20,
            MasterUsername="shop", MasterUserPassword="production-secret", DBSubnetGroupName="shop-prod-subnets",
            VpcSecurityGroupIds=[sg], DeletionProtection=protect, PubliclyAccessible=False,
            Tags=[{"Key": "env", "Value": "production"}],
        )
    # An older snapshot whose name sorts last, the newest one, and a still newer
    # snapshot of another instance: only the middle one is right.
    for instance, snap in [("shop-prod-db", "shop-prod-db-zz-oldest"), ("shop-prod-db", "shop-prod-db-2026-11-25"),
                           ("analytics-db", "analytics-db-newer")]:
        rds.create_db_snapshot(DBInstanceIdentifier=instance, DBSnapshotIdentifier=snap)
        time.sleep(1.1)
    return {"ami": ami, "vpc": vpc, "subnets": subnets, "newest_snapshot": "shop-prod-db-2026-11-25"}


def production_state(ec2, rds):
    """Production's resources, field by field (nothing may change)."""
    out = []
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            if not any(t["Key"] == "rehearse:run-id" for t in i.get("Tags", [])):
                out.append(json.dumps([i["InstanceId"], i["State"]["Name"], i["InstanceType"], i.get("Tags")], default=str))
    for g in ec2.describe_security_groups()["SecurityGroups"]:
        if not any(t["Key"] == "rehearse:run-id" for t in g.get("Tags", [])):
            out.append(json.dumps([g["GroupId"], g["GroupName"], g.get("IpPermissions"), g.get("Tags")], default=str))
    for d in rds.describe_db_instances()["DBInstances"]:
        if not any(t["Key"] == "rehearse:run-id" for t in d.get("TagList", [])):
            out.append(json.dumps([d["DBInstanceIdentifier"], d["DBInstanceStatus"], d.get("DeletionProtection"),
                                   d.get("PubliclyAccessible"), d.get("TagList")], default=str))
    for s in rds.describe_db_snapshots()["DBSnapshots"]:
        out.append(json.dumps([s["DBSnapshotIdentifier"], s.get("DBInstanceIdentifier"), s["Status"]], default=str))
    for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]:
        out.append(g["DBSubnetGroupName"])
    return sorted(out)


def leftovers(ec2, rds):
    """Anything a run left: live tagged instances, tagged groups, rh- databases,
    rehearse- subnet groups, rh- snapshots."""
    left = []
    for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["rehearse:run-id"]}])["Reservations"]:
        left += [f"instance {i['InstanceId']} {i['State']['Name']}" for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    left += [f"sg {g['GroupId']}" for g in ec2.describe_security_groups(
        Filters=[{"Name": "tag-key", "Values": ["rehearse:run-id"]}])["SecurityGroups"]]
    left += [f"db {d['DBInstanceIdentifier']}" for d in rds.describe_db_instances()["DBInstances"]
             if d["DBInstanceIdentifier"].startswith("rh-")]
    left += [f"subnet group {g['DBSubnetGroupName']}" for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
             if g["DBSubnetGroupName"].startswith("rehearse-")]
    left += [f"snapshot {s['DBSnapshotIdentifier']}" for s in rds.describe_db_snapshots()["DBSnapshots"]
             if s["DBSnapshotIdentifier"].startswith("rh-")]
    return left


# --------------------------------------------------------------------------- the description

def settle(emu):
    """Waits until moto's log has stopped growing (a request's line is written just
    after its answer is sent, so possibly after the client has exited)."""
    last, since = -1, time.monotonic()
    while True:
        n = emu.log_path.stat().st_size
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 0.3:
            return n
        time.sleep(0.05)


def requests_since(emu, offset):
    """The (method, path, status) of every request logged after byte `offset` of
    moto's log, moto's own /moto-api/ calls excluded."""
    out = []
    with open(emu.log_path, errors="replace") as f:
        f.seek(offset)
        for l in f:
            m = REQUEST_LINE.search(ANSI.sub("", l))
            if m and not m.group(2).startswith("/moto-api/"):
                out.append((m.group(1), m.group(2), m.group(0).rsplit(" ", 1)[1]))
    return out


def runnable(name, prod, replace=()):
    """environments/NAME with the emulator's ids (and the `replace` pairs), as
    tests/aws_emulator.rs builds its descriptions: no masking, no health checks, one
    exit-code suite that only checks its environment (nothing is sent to the
    instances' 10.x addresses). The text."""
    text = (ROOT / "environments" / name).read_text()
    for a, b in [("ami-0abcdef1234567890", prod["ami"]), ("vpc-0a1b2c3d4e5f60718", prod["vpc"]),
                 ("subnet-0a1b2c3d4e5f60001", prod["subnets"][0]), ("subnet-0a1b2c3d4e5f60002", prod["subnets"][1]),
                 *replace, ("../templates/", f"{ROOT}/templates/"), ("    masking: ../demo/masking.sql\n", ""),
                 ("    health:\n      path: /health\n      timeout: 5m\n", "")]:
        text = text.replace(a, b)
    a, b = text.index("\nsuites:\n"), text.index("\ndestroy:")
    text = text[:a] + (
        "\nsuites:\n  endpoints:\n    command: '" + SUITE + "'\n    timeout: 1m\n    uses: [web, worker]\n"
        "    results: exit-code\n    env:\n      SHOP_URL: \"{{ services.web.url }}\"\n"
        "      DATABASE_URL: \"{{ databases.db.url }}\"\n") + text[b:]
    assert "health:" not in text and "masking:" not in text
    return text


def variant(prod, path: Path):
    """environments/shop-aws.yaml made runnable (see `runnable`), written to `path`."""
    text = runnable("shop-aws.yaml", prod)
    path.write_text(text)
    return yaml.safe_load(text)


def script_params(desc, prod, run_id, tmp: Path):
    """What the scripted approaches need, derived from the description the same way
    rehearse's plan does (instances service.NAME.i, subnets round-robin, the same tags)."""
    now = time.gmtime()
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4 * 3600))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", now)
    base = dict(desc.get("tags", {}))
    base.update({"rehearse:run-id": run_id, "rehearse:environment": desc["name"], "rehearse:owner": desc["owner"],
                 "rehearse:expires-at": expires, "rehearse:created-at": created})

    def tags(resource):
        t = dict(base, **{"rehearse:resource": resource})
        t.setdefault("Name", f"rehearse {desc['name']} {resource} ({run_id})")
        return [{"Key": k, "Value": str(v)} for k, v in sorted(t.items())]

    net = desc["network"]
    db_name, db = next(iter(desc["databases"].items()))
    instances = []
    for name, s in desc["services"].items():
        for i in range(s.get("count", 1)):
            res = f"service.{name}.{i}"
            instances.append({"resource": res, "service": name, "type": s["instance_type"], "image": s["image"],
                              "subnet": net["subnets"][i % len(net["subnets"])], "port": s.get("port"),
                              "tags": tags(res), "client_token": f"{run_id}-{res}"[:64]})
    user_data = (ROOT / "templates/user-data.sh.tera").read_text()
    for k, v in {"{{ env.name }}": desc["name"], "{{ run.id }}": run_id, "{{ release.version }}": RELEASE,
                 "{{ release.artifact }}": f"s3://shop-releases/shop-{RELEASE}.tar.gz"}.items():
        user_data = user_data.replace(k, v)
    user_data = re.sub(r"\{%-? for .*?%\}\n(.*?)\{%-? endfor %\}\n", f"REHEARSE_DB_{db_name.upper()}_ENDPOINT=@DB_ENDPOINT@\n",
                       user_data, flags=re.S)
    # "@RUN_ID@": a template, which lifecycle_boto3.py fills in with a fresh run id.
    suffix = "@RUN_SUFFIX@" if run_id == "@RUN_ID@" else run_id.removeprefix("r-").replace("-", "")
    return {
        "run_id": run_id, "region": REGION, "vpc": net["vpc"], "subnets": net["subnets"], "cidrs": net["allow_cidrs"],
        "name": f"rehearse-{run_id}", "env": desc["name"],
        "source_db": db["source"]["rds_instance"], "db_id": f"rh-{suffix}-{db_name}"[:63], "db_class": db["instance_class"],
        "db_name": db["name"],
        "tags_sg": tags("network.security-group"), "tags_subnet_group": tags("network.db-subnet-group"),
        "tags_db": tags(f"database.{db_name}"), "instances": instances, "user_data": user_data, "suite": SUITE,
        "web_service": "web", "worker_service": "worker",
        "service_ports": sorted({s["port"] for s in desc["services"].values() if s.get("port")}),
    }


def write_cli_params(p, path: Path):
    q = shlex.quote
    spec = lambda kind, tags: json.dumps([{"ResourceType": kind, "Tags": tags}])  # noqa: E731
    out = [
        f"RUN={q(p['run_id'])}", f"VPC={q(p['vpc'])}", f"SUBNETS=({' '.join(map(q, p['subnets']))})",
        f"CIDRS=({' '.join(map(q, p['cidrs']))})", f"NAME={q(p['name'])}", f"ENV_NAME={q(p['env'])}",
        f"SOURCE_DB={q(p['source_db'])}", f"DB_ID={q(p['db_id'])}", f"DB_CLASS={q(p['db_class'])}",
        f"DB_NAME={q(p['db_name'])}",
        f"TAGS_SUBNET_GROUP={q(json.dumps(p['tags_subnet_group']))}",
        f"TAGSPEC_SG={q(spec('security-group', p['tags_sg']))}", f"TAGS_DB={q(json.dumps(p['tags_db']))}",
        f"USER_DATA={q(p['user_data'])}", f"SUITE={q(p['suite'])}",
        f"SERVICE_PORTS=({' '.join(q(str(x)) for x in p['service_ports'])})",
        f"INST_RES=({' '.join(q(i['resource']) for i in p['instances'])})",
        f"INST_SERVICE=({' '.join(q(i['service']) for i in p['instances'])})",
        f"INST_TYPE=({' '.join(q(i['type']) for i in p['instances'])})",
        f"INST_IMAGE=({' '.join(q(i['image']) for i in p['instances'])})",
        f"INST_SUBNET=({' '.join(q(i['subnet']) for i in p['instances'])})",
        f"INST_PORT=({' '.join(q(str(i['port'] or '')) for i in p['instances'])})",
        f"INST_TOKEN=({' '.join(q(i['client_token']) for i in p['instances'])})",
        "INST_TAGSPEC=(" + " ".join(q(json.dumps([{"ResourceType": "instance", "Tags": i["tags"]},
                                                   {"ResourceType": "volume", "Tags": i["tags"]}]))
                                    for i in p["instances"]) + ")",
    ]
    path.write_text("\n".join(out) + "\n")


# --------------------------------------------------------------------------- the scripts

BOTO3_SCRIPT = r'''#!/usr/bin/env python3
"""The shop-aws rehearsal lifecycle scripted with boto3 in one process: the same calls
rehearse makes, with the same concurrency (the steps of rehearse's plan that are
independent run in parallel threads, each as soon as what it depends on is done; the
waits share one batched poller per kind, as rehearse's do).

Usage: lifecycle_boto3.py PARAMS.json (written by scripts/bench_aws.py). In the params,
@RUN_ID@ and @RUN_SUFFIX@ (if present) are replaced by a fresh run id, so one params file
can be run many times. BENCH_POLL_FIRST_MS (default 100: rehearse's POLL_FIRST) is the
first poll interval, doubling up to 10 s (POLL_MAX); 0 polls with no sleep at all.

Prints {"import_ms", "clients_ms", "lifecycle_ms", "poll_sleeps_ms"} as JSON: the import
of boto3, the clients' creation, then the lifecycle itself (timed from after the clients
exist to after the last call), and the time each poller slept before its describes."""
import time
T_START = time.monotonic()
import json, os, secrets, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

T_IMPORTED = time.monotonic()
text = open(sys.argv[1]).read()
if "@RUN_ID@" in text:
    rid = time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
    text = text.replace("@RUN_ID@", rid).replace("@RUN_SUFFIX@", rid.removeprefix("r-").replace("-", ""))
p = json.loads(text)
RUN = p["run_id"]
POLL_FIRST = int(os.environ.get("BENCH_POLL_FIRST_MS", "100")) / 1000
POLL_MAX = 10.0
session = boto3.session.Session(region_name=p["region"])
# As rehearse's SDK: one attempt per call (rehearse decides every repeat above the SDK,
# and on a healthy endpoint repeats nothing).
cfg = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3)
ec2 = session.client("ec2", config=cfg)
rds = session.client("rds", config=cfg)
T_CLIENTS = time.monotonic()


def tag(tags, key):
    return next((t["Value"] for t in tags or [] if t["Key"] == key), None)


def guard(what, ident, tags):
    if tag(tags, "rehearse:run-id") != RUN:
        raise SystemExit(f"refusing to change {what} {ident}: not tagged rehearse:run-id={RUN}")


class Poller:
    """rehearse's batched poller (src/providers/aws/poller.rs): however many resources
    of a kind are waiting, each round is one describe covering all of them; the waiter
    that leads a round sleeps first (POLL_FIRST, doubling up to POLL_MAX), the others
    wait for its result."""

    def __init__(self, describe, key):
        self.describe, self.key = describe, key
        self.cond = threading.Condition()
        self.leader = threading.Lock()
        self.waiting, self.seen, self.round = set(), {}, 0
        self.slept = 0.0

    def wait(self, ident, done, what, timeout=2700):
        deadline, interval = time.monotonic() + timeout, POLL_FIRST
        with self.cond:
            self.waiting.add(ident)
            self.seen.pop(ident, None)
        try:
            while True:
                with self.cond:
                    if ident in self.seen and done(self.seen[ident]):
                        return self.seen[ident]
                    r = self.round
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                if self.leader.acquire(blocking=False):
                    try:
                        if interval:
                            time.sleep(interval)
                            self.slept += interval
                        interval = min(interval * 2, POLL_MAX)
                        with self.cond:
                            ids = sorted(self.waiting)
                        found = self.describe(ids)
                        with self.cond:
                            for i in ids:
                                self.seen[i] = None
                            for x in found:
                                self.seen[self.key(x)] = x
                            self.round += 1
                            self.cond.notify_all()
                    finally:
                        self.leader.release()
                else:
                    with self.cond:
                        self.cond.wait_for(lambda: self.round != r, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            with self.cond:
                self.waiting.discard(ident)


def describe_dbs(ids):
    return rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": ids}])["DBInstances"]


def describe_instances(ids):
    return [i for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
            for r in page["Reservations"] for i in r["Instances"]]


databases = Poller(describe_dbs, lambda d: d["DBInstanceIdentifier"])
instances = Poller(describe_instances, lambda i: i["InstanceId"])
pool = ThreadPoolExecutor(max_workers=8)


def authorize(sg, ports):
    """TCP only, one permission per port, from allow_cidrs and from the group itself."""
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": sg}],
        "IpRanges": [{"CidrIp": c, "Description": "rehearse: allowed in"} for c in p["cidrs"]]}
        for port in sorted(set(ports))])


def create_sg():
    return ec2.create_security_group(
        GroupName=p["name"], Description=f"rehearse run {RUN} of {p['env']}", VpcId=p["vpc"],
        TagSpecifications=[{"ResourceType": "security-group", "Tags": p["tags_sg"]}])["GroupId"]


def create_subnet_group():
    rds.create_db_subnet_group(DBSubnetGroupName=p["name"], DBSubnetGroupDescription=f"rehearse run {RUN}",
                               SubnetIds=p["subnets"], Tags=p["tags_subnet_group"])


def database(sg):
    """database.db: find the newest available snapshot of production (by
    SnapshotCreateTime, all pages), restore it, wait, secure it (private, no deletion
    protection, a new password), wait again."""
    src = p["source_db"]
    prod = rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [src]}])["DBInstances"]
    if not any(d["DBInstanceIdentifier"] == src for d in prod):
        raise SystemExit(f"the production RDS instance {src} does not exist")
    snaps = [s for page in rds.get_paginator("describe_db_snapshots").paginate(DBInstanceIdentifier=src)
             for s in page["DBSnapshots"]]
    snap = max((s for s in snaps if s.get("DBInstanceIdentifier") == src and s["Status"] == "available"
                and s.get("SnapshotCreateTime")), key=lambda s: s["SnapshotCreateTime"])
    rds.restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=p["db_id"], DBSnapshotIdentifier=snap["DBSnapshotIdentifier"],
        DBInstanceClass=p["db_class"], DBSubnetGroupName=p["name"], VpcSecurityGroupIds=[sg],
        PubliclyAccessible=False, DeletionProtection=False, CopyTagsToSnapshot=False, Tags=p["tags_db"])
    available = lambda d: d is not None and d["DBInstanceStatus"] == "available"  # noqa: E731
    db = databases.wait(p["db_id"], available, p["db_id"])
    guard("DB instance", p["db_id"], db.get("TagList"))
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    password = "".join(secrets.choice(alphabet) for _ in range(32))
    rds.modify_db_instance(DBInstanceIdentifier=p["db_id"], MasterUserPassword=password, PubliclyAccessible=False,
                           DeletionProtection=False, ApplyImmediately=True)
    db = databases.wait(p["db_id"], available, p["db_id"])
    if db.get("PubliclyAccessible") or db.get("DeletionProtection"):
        raise SystemExit(f"{p['db_id']} is still public or deletion protected")
    host, port = db["Endpoint"]["Address"], db["Endpoint"].get("Port", 5432)
    return host, port, f"postgres://{db.get('MasterUsername', 'postgres')}:{password}@{host}:{port}/{p['db_name']}"


def instance(sg, i, user_data):
    """service.NAME.i: RunInstances (its own tags and client token), then wait running."""
    r = ec2.run_instances(
        ImageId=i["image"], InstanceType=i["type"], MinCount=1, MaxCount=1, SubnetId=i["subnet"],
        SecurityGroupIds=[sg], UserData=user_data, ClientToken=i["client_token"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": i["tags"]}, {"ResourceType": "volume", "Tags": i["tags"]}])
    ident = r["Instances"][0]["InstanceId"]
    x = instances.wait(ident, lambda x: x is not None and x["State"]["Name"] == "running", ident)
    return ident, x.get("PrivateIpAddress", "")


def destroy_instances(ids):
    """The instances in one batch, as rehearse's destroy_many: one describe guards
    them all, one TerminateInstances, then each waits (one poller)."""
    found = describe_instances(ids)
    for x in found:
        guard("instance", x["InstanceId"], x.get("Tags"))
    alive = [x["InstanceId"] for x in found if x["State"]["Name"] != "terminated"]
    if alive:
        ec2.terminate_instances(InstanceIds=alive)
    gone = lambda x: x is None or x["State"]["Name"] == "terminated"  # noqa: E731
    list(pool.map(lambda i: instances.wait(i, gone, f"{i} terminated"), alive))


def destroy_database():
    d = describe_dbs([p["db_id"]])
    if not d:
        return
    guard("DB instance", p["db_id"], d[0].get("TagList"))
    rds.delete_db_instance(DBInstanceIdentifier=p["db_id"], SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
    databases.wait(p["db_id"], lambda d: d is None, f"{p['db_id']} gone")


def destroy_subnet_group():
    """Its tags are only readable with ListTagsForResource."""
    g = rds.describe_db_subnet_groups(DBSubnetGroupName=p["name"])["DBSubnetGroups"][0]
    guard("DB subnet group", p["name"], rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"])["TagList"])
    rds.delete_db_subnet_group(DBSubnetGroupName=p["name"])


def destroy_sg(sg):
    guard("security group", sg, ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0].get("Tags"))
    delay = 0.5
    while True:  # retrying DependencyViolation, as rehearse does
        try:
            ec2.delete_security_group(GroupId=sg)
            return
        except ec2.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "DependencyViolation":
                raise
            time.sleep(delay)
            delay = min(delay * 2, 15)


def lifecycle():
    # Network: the run's security group (created with no ingress) and DB subnet group
    # together; the services' ports open (TCP, from allow_cidrs and the group itself) as
    # soon as the group exists; the database as soon as both groups exist.
    f_sg, f_subnets = pool.submit(create_sg), pool.submit(create_subnet_group)
    sg = f_sg.result()
    f_services = pool.submit(authorize, sg, p["service_ports"]) if p["service_ports"] else None
    f_subnets.result()
    host, port, db_url = database(sg)
    # Only now, with production's password gone from the copy, is the copy's port opened.
    authorize(sg, [port])
    if f_services:
        f_services.result()
    # Every planned instance at once; their waits share the instances' poller.
    user_data = p["user_data"].replace("@DB_ENDPOINT@", f"{host}:{port}")
    started = list(pool.map(lambda i: instance(sg, i, user_data), p["instances"]))
    ids = [s[0] for s in started]

    def url(n):
        i = p["instances"][n]
        return f"http://{started[n][1]}:{i['port']}" if i["port"] else f"http://{started[n][1]}"

    first = {}
    for n, i in enumerate(p["instances"]):
        first.setdefault(i["service"], n)
    # The suite, with the endpoints in its environment.
    env = dict(os.environ, SHOP_URL=url(first[p["web_service"]]), DATABASE_URL=db_url,
               REHEARSE_SERVICE_WORKER_URL=url(first[p["worker_service"]]))
    suite = subprocess.run(["sh", "-c", p["suite"]], env=env).returncode
    # Teardown by rank, as rehearse's: the instances and the database together, then
    # the two groups together.
    for f in [pool.submit(destroy_instances, ids), pool.submit(destroy_database)]:
        f.result()
    for f in [pool.submit(destroy_subnet_group), pool.submit(destroy_sg, sg)]:
        f.result()
    return suite


suite = lifecycle()
t_end = time.monotonic()
pool.shutdown()
print(json.dumps({"import_ms": round((T_IMPORTED - T_START) * 1000, 1),
                  "clients_ms": round((T_CLIENTS - T_IMPORTED) * 1000, 1),
                  "lifecycle_ms": round((t_end - T_CLIENTS) * 1000, 1),
                  "poll_sleeps_ms": {"databases": round(databases.slept * 1000), "instances": round(instances.slept * 1000)},
                  "suite_exit": suite}))
sys.exit(0 if suite == 0 else 1)
'''

STARTUP_SCRIPT = r'''#!/usr/bin/env python3
"""What a boto3 script does before its first call: the interpreter starts, imports boto3
and builds its two clients (as lifecycle_boto3.py does), then exits."""
import boto3
from botocore.config import Config

session = boto3.session.Session(region_name="eu-west-1")
cfg = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3)
ec2 = session.client("ec2", config=cfg)
rds = session.client("rds", config=cfg)
'''

CLI_SCRIPT = r'''#!/usr/bin/env bash
# The shop-aws rehearsal lifecycle scripted with the aws CLI: one `aws` process per
# call, the same calls rehearse makes, with the same concurrency (independent steps of
# rehearse's plan run as background jobs, each once what it depends on is done).
# Usage: lifecycle-cli.sh PARAMS.sh (written by scripts/bench_aws.py); AWS is the CLI.
set -euo pipefail
. "$1"
AWS=${AWS:-aws}
# As rehearse's SDK: one attempt per call, no retries by the CLI.
export AWS_MAX_ATTEMPTS=1 AWS_RETRY_MODE=standard
aws() { "$AWS" "$@"; }
ms_sleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
next_ms() { local n=$(($1 * 2)) cap=${2:-10000}; echo $((n > cap ? cap : n)); } # ms [cap]
guard() { # what id owner
  [ "$3" = "$RUN" ] || { echo "refusing to change $1 $2: not tagged rehearse:run-id=$RUN" >&2; exit 1; }
}
TAG="Tags[?Key=='rehearse:run-id']|[0].Value"
DB_Q="DBInstances[0].[DBInstanceStatus,PubliclyAccessible,DeletionProtection,Endpoint.Address,Endpoint.Port,MasterUsername,TagList[?Key=='rehearse:run-id']|[0].Value]"
wait_db_available() { # sets st pub prot host port user owner
  local ms=100 out deadline=$((SECONDS + 1800))
  while :; do
    ms_sleep $ms; ms=$(next_ms $ms)
    out=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$DB_ID" --query "$DB_Q" --output text)
    read -r st pub prot host port user owner <<<"$out"
    [ "$st" = available ] && return 0
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $DB_ID" >&2; exit 1; }
  done
}

# TCP only, one permission per port, from allow_cidrs and from the group itself.
authorize() { # port...
  local ranges="" perms="" c p
  for c in "${CIDRS[@]}"; do ranges="$ranges${ranges:+,}{\"CidrIp\":\"$c\",\"Description\":\"rehearse: allowed in\"}"; done
  for p in $(printf '%s\n' "$@" | sort -nu); do
    perms="$perms${perms:+,}{\"IpProtocol\":\"tcp\",\"FromPort\":$p,\"ToPort\":$p,\"UserIdGroupPairs\":[{\"GroupId\":\"$sg\"}],\"IpRanges\":[$ranges]}"
  done
  aws ec2 authorize-security-group-ingress --group-id "$sg" --ip-permissions "[$perms]" >/dev/null
}

# Values from steps run in the background come back through files in $T.
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# Network: the run's security group (created with no ingress) and DB subnet group
# together; the services' ports open (TCP, from allow_cidrs and the group itself) as soon
# as the group exists; the database as soon as both groups exist.
aws ec2 create-security-group --group-name "$NAME" --description "rehearse run $RUN of $ENV_NAME" --vpc-id "$VPC" \
  --tag-specifications "$TAGSPEC_SG" --query GroupId --output text >"$T/sg" &
p_sg=$!
aws rds create-db-subnet-group --db-subnet-group-name "$NAME" --db-subnet-group-description "rehearse run $RUN" \
  --subnet-ids "${SUBNETS[@]}" --tags "$TAGS_SUBNET_GROUP" --query DBSubnetGroup.DBSubnetGroupName --output text \
  >/dev/null &
p_subnets=$!
wait $p_sg
sg=$(<"$T/sg")
p_services=
if [ ${#SERVICE_PORTS[@]} -gt 0 ]; then
  authorize "${SERVICE_PORTS[@]}" &
  p_services=$!
fi
wait $p_subnets

# database.db: the newest available snapshot of production (by SnapshotCreateTime, all
# pages); restore, wait, secure (private, no deletion protection, new password), wait again.
n=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$SOURCE_DB" \
  --query "length(DBInstances[?DBInstanceIdentifier=='$SOURCE_DB'])" --output text)
[ "$n" -ge 1 ] || { echo "the production RDS instance $SOURCE_DB does not exist" >&2; exit 1; }
snap=$(aws rds describe-db-snapshots --db-instance-identifier "$SOURCE_DB" \
  --query "reverse(sort_by(DBSnapshots[?DBInstanceIdentifier=='$SOURCE_DB' && Status=='available' && SnapshotCreateTime], &SnapshotCreateTime))[0].DBSnapshotIdentifier" \
  --output text)
[ -n "$snap" ] && [ "$snap" != None ] || { echo "no available snapshot of $SOURCE_DB" >&2; exit 1; }
aws rds restore-db-instance-from-db-snapshot --db-instance-identifier "$DB_ID" --db-snapshot-identifier "$snap" \
  --db-instance-class "$DB_CLASS" --db-subnet-group-name "$NAME" --vpc-security-group-ids "$sg" \
  --no-publicly-accessible --no-deletion-protection --no-copy-tags-to-snapshot --tags "$TAGS_DB" \
  --query DBInstance.DBInstanceIdentifier --output text >/dev/null
wait_db_available
guard "DB instance" "$DB_ID" "$owner"
password=$(LC_ALL=C tr -dc 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789' < <(head -c 1024 /dev/urandom))
password=${password:0:32}
aws rds modify-db-instance --db-instance-identifier "$DB_ID" --master-user-password "$password" \
  --no-publicly-accessible --no-deletion-protection --apply-immediately \
  --query DBInstance.DBInstanceIdentifier --output text >/dev/null
wait_db_available
[ "$pub" = False ] && [ "$prot" = False ] || { echo "$DB_ID is still public or deletion protected" >&2; exit 1; }
db_url="postgres://$user:$password@$host:$port/$DB_NAME"

# Only now, with production's password gone from the copy, is the copy's port opened.
authorize "$port"
[ -z "$p_services" ] || wait $p_services

# Every planned instance at once, then one describe per interval for all of them.
user_data=${USER_DATA//@DB_ENDPOINT@/$host:$port}
pids=()
for n in "${!INST_RES[@]}"; do
  aws ec2 run-instances --image-id "${INST_IMAGE[$n]}" --instance-type "${INST_TYPE[$n]}" --count 1 \
    --subnet-id "${INST_SUBNET[$n]}" --security-group-ids "$sg" --user-data "$user_data" \
    --client-token "${INST_TOKEN[$n]}" --tag-specifications "${INST_TAGSPEC[$n]}" \
    --query 'Instances[0].InstanceId' --output text >"$T/instance-$n" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
ids=()
for n in "${!INST_RES[@]}"; do ids+=("$(<"$T/instance-$n")"); done
ms=100; deadline=$((SECONDS + 600))
while :; do
  ms_sleep $ms; ms=$(next_ms $ms)
  out=$(aws ec2 describe-instances --instance-ids "${ids[@]}" \
    --query 'Reservations[].Instances[].[InstanceId,State.Name,PrivateIpAddress]' --output text)
  [ "$(grep -c $'\trunning\t' <<<"$out")" -eq ${#ids[@]} ] && break
  [ $SECONDS -lt $deadline ] || { echo "timed out waiting for instances" >&2; exit 1; }
done
declare -A addr
while read -r i s a; do addr[$i]=$a; done <<<"$out"
url() { local a=${addr[${ids[$1]}]} p=${INST_PORT[$1]}; if [ -n "$p" ]; then echo "http://$a:$p"; else echo "http://$a"; fi; }
for n in "${!INST_SERVICE[@]}"; do
  [ "${INST_SERVICE[$n]}" = web ] && [ -z "${web_url:-}" ] && web_url=$(url $n)
  [ "${INST_SERVICE[$n]}" = worker ] && [ -z "${worker_url:-}" ] && worker_url=$(url $n)
done

# The suite, with the endpoints in its environment.
suite=0
SHOP_URL=$web_url DATABASE_URL=$db_url REHEARSE_SERVICE_WORKER_URL=$worker_url sh -c "$SUITE" || suite=$?

# Teardown by rank, as rehearse's: the instances and the database together (each: the
# guard describe, the delete, a wait on the same schedule), then the two groups together
# (the subnet group's tags are only readable with list-tags-for-resource; the security
# group's deletion retried on DependencyViolation).
destroy_instances() {
  local alive=() i st owner ms=100 deadline=$((SECONDS + 2700)) out
  while read -r i st owner; do
    [ -n "$i" ] || continue
    guard instance "$i" "$owner"
    [ "$st" = terminated ] || alive+=("$i")
  done < <(aws ec2 describe-instances --instance-ids "${ids[@]}" \
             --query "Reservations[].Instances[].[InstanceId,State.Name,$TAG]" --output text)
  [ ${#alive[@]} -gt 0 ] || return 0
  aws ec2 terminate-instances --instance-ids "${alive[@]}" >/dev/null
  while :; do
    ms_sleep $ms; ms=$(next_ms $ms)
    out=$(aws ec2 describe-instances --instance-ids "${alive[@]}" --query 'Reservations[].Instances[].State.Name' --output text)
    [ -n "$(tr '\t' '\n' <<<"$out" | grep -vx terminated || true)" ] || return 0
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for the instances to terminate" >&2; exit 1; }
  done
}
destroy_database() {
  local out st owner n ms=100 deadline=$((SECONDS + 2700))
  out=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$DB_ID" \
    --query "DBInstances[0].[DBInstanceStatus,TagList[?Key=='rehearse:run-id']|[0].Value]" --output text)
  read -r st owner <<<"$out"
  [ "$st" != None ] || return 0
  guard "DB instance" "$DB_ID" "$owner"
  aws rds delete-db-instance --db-instance-identifier "$DB_ID" --skip-final-snapshot \
    --delete-automated-backups --query DBInstance.DBInstanceIdentifier --output text >/dev/null
  while :; do
    ms_sleep $ms; ms=$(next_ms $ms)
    n=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$DB_ID" --query 'length(DBInstances)' --output text)
    [ "$n" != 0 ] || return 0
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $DB_ID to go" >&2; exit 1; }
  done
}
destroy_subnet_group() {
  local arn owner
  arn=$(aws rds describe-db-subnet-groups --db-subnet-group-name "$NAME" --query 'DBSubnetGroups[0].DBSubnetGroupArn' --output text)
  owner=$(aws rds list-tags-for-resource --resource-name "$arn" --query "TagList[?Key=='rehearse:run-id']|[0].Value" --output text)
  guard "DB subnet group" "$NAME" "$owner"
  aws rds delete-db-subnet-group --db-subnet-group-name "$NAME"
}
destroy_sg() {
  local owner err ms=500
  owner=$(aws ec2 describe-security-groups --group-ids "$sg" --query "SecurityGroups[0].$TAG" --output text)
  guard "security group" "$sg" "$owner"
  until err=$(aws ec2 delete-security-group --group-id "$sg" 2>&1 >/dev/null); do
    grep -q DependencyViolation <<<"$err" || { echo "$err" >&2; exit 1; }
    ms_sleep $ms; ms=$(next_ms $ms 15000)
  done
}
destroy_instances & p1=$!
destroy_database & p2=$!
wait $p1
wait $p2
destroy_subnet_group & p1=$!
destroy_sg & p2=$!
wait $p1
wait $p2
exit $suite
'''


# --------------------------------------------------------------------------- the minimum

def minimum_calls(n_instances, n_dbs=1, service_ports=True):
    """The calls the plan cannot do without (see the rule printed with the table).
    Returns (strict, per_resource)."""
    provision = (1 + 1              # CreateDBSubnetGroup, CreateSecurityGroup (no ingress)
                 + int(service_ports)  # AuthorizeSecurityGroupIngress: the services' ports, once the group exists
                 + int(n_dbs > 0)   # AuthorizeSecurityGroupIngress: the copies' ports, once every copy is
                                    # secured (it cannot share the first: the copy still has production's password)
                 + n_dbs * (2       # find the backup: DescribeDBInstances (production) + DescribeDBSnapshots (1 page)
                            + 1     # RestoreDBInstanceFromDBSnapshot
                            + 1     # one DescribeDBInstances: available (its tags are the guard for the modify)
                            + 1     # ModifyDBInstance
                            + 1)    # one DescribeDBInstances: available again, settings verified
                 + n_instances      # RunInstances, one per planned instance (each has its own tags and token)
                 + 1)               # one DescribeInstances covering all instances: running
    teardown_db = n_dbs * 3         # DescribeDBInstances (guard), DeleteDBInstance, one DescribeDBInstances: gone
    teardown_net = (2 + 1           # DescribeDBSubnetGroups + ListTagsForResource (guard), DeleteDBSubnetGroup
                    + 1 + 1)        # DescribeSecurityGroups (guard), DeleteSecurityGroup
    strict = provision + (1 + 1 + 1) + teardown_db + teardown_net  # one describe, one terminate, one wait for all
    per_resource = provision + (2 * n_instances + 1) + teardown_db + teardown_net
    return strict, per_resource


# --------------------------------------------------------------------------- the runs

class TraceProxy:
    """A loopback HTTP/1.1 relay in front of moto that records, per request, when it
    arrived, when its answer left and its Action (for `--trace`: where the time goes)."""

    def __init__(self, upstream_port):
        import asyncio, threading
        self.upstream, self.calls, self.t0 = upstream_port, [], time.monotonic()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def read_msg(r):
            head = await r.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            return head, (await r.readexactly(int(m.group(1))) if m else b"")

        async def handle(cr, cw):
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
            try:
                while True:
                    try:
                        head, body = await read_msg(cr)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    t = time.monotonic()
                    action = urllib.parse.parse_qs(body.decode(errors="replace")).get("Action", ["?"])[0]
                    uw.write(head + body)
                    await uw.drain()
                    rh, rb = await read_msg(ur)
                    cw.write(rh + rb)
                    await cw.drain()
                    self.calls.append((t, time.monotonic(), action))
            finally:
                cw.close()
                uw.close()

        async def serve():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            started.set()

        threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                         daemon=True).start()
        started.wait(10)

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)


def timed(cmd, env, cwd):
    """Runs cmd to its end; returns its wall time (s) and a result with its exit code,
    output and CPU time (user + sys, s, from wait4: the process and every descendant it
    waited for). Output goes to files, not pipes, so the parent does nothing meanwhile."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        timed.started = t
        out.seek(0)
        err.seek(0)
        r = types.SimpleNamespace(returncode=proc.returncode, stdout=out.read().decode("utf-8", "replace"),
                                  stderr=err.read().decode("utf-8", "replace"), cpu=ru.ru_utime + ru.ru_stime)
    return wall, r


def machine_load():
    """The 1-minute load average and the compilers running, for the report."""
    def count(name):
        r = subprocess.run(["pgrep", "-c", "-x", name], capture_output=True, text=True)
        return int(r.stdout.strip() or 0)
    return {"load1": os.getloadavg()[0], "rustc": count("rustc"), "cargo": count("cargo"),
            "at": time.strftime("%H:%M UTC", time.gmtime())}


def serve():
    """A seeded emulator left running, with a description for rehearse and a params file
    for the boto3 script (a fresh run id each time), so that both can be timed as whole
    processes, in turn, by any outside timer; stopped (by its PID) on Ctrl-C."""
    d = OUT / "aws-serve"  # not under WORK, which each benchmark run clears
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    os.chmod(d, 0o711)
    (d / "lifecycle_boto3.py").write_text(BOTO3_SCRIPT)
    (d / "startup_boto3.py").write_text(STARTUP_SCRIPT)
    emu = Emulator(d)
    try:
        ec2, rds = clients(emu)
        prod = seed(ec2, rds)
        desc = variant(prod, d / "shop-aws.yaml")
        (d / "params.json").write_text(json.dumps(script_params(desc, prod, "@RUN_ID@", d)))
        for x in ("state", "work"):
            (d / x).mkdir()
            os.chmod(d / x, 0o711)
        env = aws_env(emu, d)
        (d / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                                          if k.startswith("AWS_"))
                                  + f"export REHEARSE_STATE_DIR={d}/state REHEARSE_WORK_DIR={d}/work NO_COLOR=1\n")
        r = os.path.relpath
        print(f"""moto (PID {emu.proc.pid}) on {emu.url}, seeded. In another shell, from {ROOT}:

    . {r(d / 'env.sh', ROOT)}
    hyperfine -N -w 1 -r 20 '{r(BIN, ROOT)} --version' '{r(VPY, ROOT)} {r(d / 'startup_boto3.py', ROOT)}'
    hyperfine -N -w 1 -r 10 '{r(BIN, ROOT)} run {r(d / 'shop-aws.yaml', ROOT)} --release {RELEASE} --format json' \\
        '{r(VPY, ROOT)} {r(d / 'lifecycle_boto3.py', ROOT)} {r(d / 'params.json', ROOT)}'

(or /usr/bin/time -f '%e s %U user %S sys' on each). Ctrl-C here stops moto.""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


APPROACHES = ("rehearse", "boto3", "boto3-nofloor", "cli")


def main():
    for need, how in ((BIN, "cargo build --release"), (MOTO, "scripts/install-deps.sh --emulator"),
                      (AWS, ".venv/bin/pip install awscli")):
        if not need.is_file():
            sys.exit(f"{need} is missing: {how}")
    # A SIGTERM ends the run through the finally below (which stops moto by its PID).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    OUT.mkdir(parents=True, exist_ok=True)
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    os.chmod(tmp, 0o711)
    (WORK / "lifecycle_boto3.py").write_text(BOTO3_SCRIPT)
    (WORK / "startup_boto3.py").write_text(STARTUP_SCRIPT)
    (WORK / "lifecycle-cli.sh").write_text(CLI_SCRIPT)
    os.chmod(WORK / "lifecycle-cli.sh", 0o755)
    emu = Emulator(tmp)
    env = aws_env(emu, tmp)
    env["AWS"] = str(AWS)
    trace = TraceProxy(emu.port) if TRACE else None
    if trace:
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{trace.port}"
    timelines = {}
    ec2, rds = clients(emu)
    approaches = ("rehearse", "boto3", "cli") if TRACE else APPROACHES
    results = {a: {"wall": [], "cpu": [], "calls": [], "ops": None, "runs_ops": [], "extra": []} for a in approaches}
    startup = {"rehearse": [], "boto3": []}
    loads = [machine_load()]
    reports = []
    aws_version = subprocess.run([str(AWS), "--version"], capture_output=True, text=True, env=env)
    aws_version = (aws_version.stdout or aws_version.stderr).strip()
    moto_version = subprocess.run([str(VPY), "-c", "import moto; print(moto.__version__)"], capture_output=True,
                                  text=True).stdout.strip()
    n_instances, has_ports = 0, True
    try:
        # Warm-up, not measured: one lifecycle by the boto3 script, so that no approach
        # pays moto's first-use costs (its first TerminateInstances in a fresh server
        # takes ~150-200 ms, later ones ~5 ms), and one start-up of each.
        emu.reset()
        prod = seed(ec2, rds)
        wdir = tmp / "warm-up"
        wdir.mkdir()
        wdesc = variant(prod, wdir / "shop-aws.yaml")
        wp = script_params(wdesc, prod, time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3), wdir)
        (wdir / "params.json").write_text(json.dumps(wp))
        _, r = timed([str(VPY), str(WORK / "lifecycle_boto3.py"), str(wdir / "params.json")], env, wdir)
        if r.returncode != 0:
            sys.exit(f"the warm-up lifecycle failed: {r.stderr}")
        start_cmds = {"rehearse": [str(BIN), "--version"], "boto3": [str(VPY), str(WORK / "startup_boto3.py")]}
        for cmd in start_cmds.values():
            timed(cmd, env, tmp)
        if trace:
            trace.take()
        for rep in range(REPS):
            # Start-up, in pairs, alternating which goes first.
            for k in range(0 if TRACE else STARTUP_PER_REP):
                for who in (("rehearse", "boto3") if (rep + k) % 2 == 0 else ("boto3", "rehearse")):
                    wall, r = timed(start_cmds[who], env, tmp)
                    if r.returncode != 0:
                        sys.exit(f"{' '.join(start_cmds[who])} failed: {r.stderr}")
                    startup[who].append(wall)
            # The lifecycles, in an order that rotates from one repetition to the next.
            for approach in approaches[rep % len(approaches):] + approaches[:rep % len(approaches)]:
                emu.reset()
                prod = seed(ec2, rds)
                before = production_state(ec2, rds)
                rdir = tmp / f"{approach}-{rep}"
                rdir.mkdir()
                os.chmod(rdir, 0o711)
                desc = variant(prod, rdir / "shop-aws.yaml")
                n_instances = sum(s.get("count", 1) for s in desc["services"].values())
                has_ports = any(s.get("port") for s in desc["services"].values())
                emu.start_recording()
                base = emu.settled_count()
                if trace:
                    trace.take()
                if approach == "rehearse":
                    for d in ("state", "work"):
                        (rdir / d).mkdir()
                        os.chmod(rdir / d, 0o711)
                    e = dict(env, REHEARSE_STATE_DIR=str(rdir / "state"), REHEARSE_WORK_DIR=str(rdir / "work"))
                    e.pop("REHEARSE_LOG", None)
                    wall, r = timed([str(BIN), "run", str(rdir / "shop-aws.yaml"), "--release", RELEASE, "--format",
                                     "json"], e, ROOT)
                    if r.returncode != 0:
                        sys.exit(f"rehearse failed ({r.returncode}): {r.stderr}\n{r.stdout}")
                    rep_json = json.loads(r.stdout)
                    if rep_json.get("verdict") != "passed":
                        sys.exit(f"rehearse's verdict: {rep_json.get('verdict')}: {r.stdout}")
                    backups = rep_json.get("backups") or [{}]
                    if backups[0].get("backup") != prod["newest_snapshot"]:
                        sys.exit(f"rehearse restored {backups[0].get('backup')}, not {prod['newest_snapshot']}")
                    reports.append(rep_json)
                    (WORK / f"rehearse-report-{rep + 1}.json").write_text(r.stdout)
                    results[approach]["extra"].append(rep_json.get("total_ms"))
                else:
                    run_id = time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
                    p = script_params(desc, prod, run_id, rdir)
                    if approach.startswith("boto3"):
                        (rdir / "params.json").write_text(json.dumps(p))
                        e = dict(env, BENCH_POLL_FIRST_MS="0" if approach == "boto3-nofloor" else "100")
                        wall, r = timed([str(VPY), str(WORK / "lifecycle_boto3.py"), str(rdir / "params.json")], e,
                                        rdir)
                        if r.returncode == 0:
                            results[approach]["extra"].append(json.loads(r.stdout.strip().splitlines()[-1]))
                    else:
                        write_cli_params(p, rdir / "params.sh")
                        wall, r = timed(["bash", str(WORK / "lifecycle-cli.sh"), str(rdir / "params.sh")], env, rdir)
                    if r.returncode != 0:
                        sys.exit(f"the {approach} script failed ({r.returncode}): {r.stderr}\n{r.stdout}")
                calls = emu.settled_count() - base
                ops = emu.stop_recording()
                if len(ops) != calls:
                    log(f"note: {approach}: the log counts {calls} requests, the recorder {len(ops)}")
                left = leftovers(ec2, rds)
                if left:
                    sys.exit(f"{approach} left behind: {left}")
                if production_state(ec2, rds) != before:
                    sys.exit(f"{approach} changed production")
                results[approach]["wall"].append(wall)
                results[approach]["cpu"].append(r.cpu)
                results[approach]["calls"].append(calls)
                results[approach]["ops"] = results[approach]["ops"] or ops
                results[approach]["runs_ops"].append(ops)
                if results[approach]["ops"] != ops:
                    results[approach].setdefault("other_ops", []).append(ops)
                log(f"rep {rep + 1}/{REPS} {approach}: {wall:.2f} s, {calls} calls")
                if trace:
                    timelines[approach] = (wall, [(a - timed.started, b - timed.started, op) for a, b, op in trace.take()])
            loads.append(machine_load())
    finally:
        if trace:
            trace.stop()
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if trace:
        trace_report(timelines)
        (OUT / "aws-trace.md").write_text("\n".join(lines) + "\n")
        return
    report(results, startup, loads, reports, n_instances, has_ports, aws_version, moto_version)
    (OUT / "aws.md").write_text("\n".join(lines) + "\n")


def trace_report(timelines):
    """Each approach's calls on one time axis (ms from its process start), with the
    idle gaps between them."""
    say("## AWS lifecycle: per-call timeline (`python3 scripts/bench_aws.py --trace`)")
    say()
    say("Through a timestamping loopback relay in front of moto (one run each; the relay adds a little to "
        "every call). Times are milliseconds from the approach's process start; *gap* is the time since the "
        "previous answer (the previous call's end), where nothing was in flight.")
    for approach, (wall, calls) in timelines.items():
        say()
        say(f"### {approach}: {wall * 1000:.0f} ms wall, {len(calls)} calls")
        say()
        say("| sent | answered | took | gap | operation |")
        say("|--:|--:|--:|--:|---|")
        last_end = 0.0
        busy = 0.0
        spans = sorted(calls)
        cover_end = 0.0
        for a, b, op in spans:
            gap = max(0.0, a - last_end)
            say(f"| {a * 1000:.0f} | {b * 1000:.0f} | {(b - a) * 1000:.0f} | {gap * 1000:.0f} | {op} |")
            busy += max(0.0, b - max(a, cover_end))
            cover_end = max(cover_end, b)
            last_end = max(last_end, b)
        first = spans[0][0] if spans else 0.0
        say()
        say(f"- before the first call: {first * 1000:.0f} ms; after the last answer: {(wall - last_end) * 1000:.0f} ms; "
            f"some call in flight: {busy * 1000:.0f} ms; nothing in flight between first and last: "
            f"{(last_end - first - busy) * 1000:.0f} ms.")
    say()


def summarize_ops(ops):
    counts = {}
    for o in ops:
        counts[o] = counts.get(o, 0) + 1
    return counts


def compare_with_rehearse(results):
    """Each script run's calls beside rehearse's runs. The calls must be the same (as a
    multiset). For the order: rehearse runs some steps concurrently (the two groups'
    creation; the services' ingress beside the backup search; the instances' and the
    database's teardown; the two groups' deletion), so its own runs differ in order.
    Calls are named by operation and occurrence (the 2nd DescribeDBInstances, ...);
    every pair that came in the same order in all of rehearse's runs must come in that
    order in the script's run too. Pairs rehearse ordered both ways are concurrent steps
    and may come in either order in a script too."""
    out = []
    rh_runs = results["rehearse"]["runs_ops"]
    if not rh_runs:
        return out

    def named(ops):
        seen, out = {}, []
        for o in ops:
            seen[o] = seen.get(o, 0) + 1
            out.append((o, seen[o]))
        return out

    def before(ops):
        n = named(ops)
        return {(n[i], n[j]) for i in range(len(n)) for j in range(i + 1, len(n))}

    kept = set.intersection(*(before(r) for r in rh_runs))
    name = lambda c: c[0] if c[1] == 1 else f"{c[0]} #{c[1]}"  # noqa: E731
    orders = {tuple(r) for r in rh_runs}
    out.append(f"- rehearse's {len(rh_runs)} runs made their calls in {len(orders)} different "
               f"order{'s' if len(orders) != 1 else ''}; pairs of calls that came in the same order in all of "
               f"them: {len(kept)}.")
    for a in (x for x in results if x != "rehearse"):
        same, consistent, notes = 0, 0, []
        for n, ops in enumerate(results[a]["runs_ops"]):
            if not any(sorted(ops) == sorted(r) for r in rh_runs):
                mine, theirs = summarize_ops(ops), summarize_ops(rh_runs[0])
                diff = {o: (theirs.get(o, 0), mine.get(o, 0)) for o in set(mine) | set(theirs)
                        if mine.get(o, 0) != theirs.get(o, 0)}
                notes.append(f"- note: {a} run {n + 1} made other calls than rehearse (rehearse, {a}): {diff}")
                continue
            same += 1
            broken = sorted(kept - before(ops), key=lambda pr: (named(rh_runs[0]).index(pr[0]),
                                                                 named(rh_runs[0]).index(pr[1])))
            if broken:
                notes.append(f"- note: {a} run {n + 1} reverses {len(broken)} order(s) rehearse kept in every run: "
                             + "; ".join(f"{name(x)} before {name(y)}" for x, y in broken))
            else:
                consistent += 1
        runs = len(results[a]["runs_ops"])
        if a == "boto3-nofloor":
            # Not equal work by design (no sleep before a describe: more describes); said in sum.
            def without(ops):
                return sorted(o for o in ops if o != "DescribeInstances")
            ok = sum(1 for ops in results[a]["runs_ops"] if without(ops) == without(rh_runs[0]))
            di = sorted({ops.count("DescribeInstances") for ops in results[a]["runs_ops"]})
            out.append(f"- {a}: apart from DescribeInstances ({di[0]}–{di[-1]} instead of "
                       f"{rh_runs[0].count('DescribeInstances')}: no sleep before a describe, see above), the same "
                       f"calls as rehearse in {ok} of {runs} runs.")
            continue
        out.append(f"- {a}: {same} of {runs} runs made the same calls as rehearse; {consistent} of {runs} in an order "
                   "that keeps every order rehearse kept in all its runs (differences only between steps rehearse "
                   "runs concurrently).")
        out += notes
    return out


def spread(xs, unit=1000, digits=0):
    """min / median / max, in ms by default."""
    f = lambda x: f"{x * unit:.{digits}f}"  # noqa: E731
    return f"{f(min(xs))} / **{f(statistics.median(xs))}** / {f(max(xs))}"


def ratio(x):
    return f"{x:.0f}" if x >= 20 else f"{x:.1f}" if x >= 5 else f"{x:.2f}"


def med_ratio(bs, rs):
    return ratio(statistics.median(bs) / statistics.median(rs))


def pair_ratios(bs, rs):
    """Each pair's ratio b / r, as `min–max`."""
    q = [b / r for b, r in zip(bs, rs)]
    return f"{ratio(min(q))}–{ratio(max(q))}"


def report(results, startup, loads, reports, n_instances, has_ports, aws_version, moto_version):
    med = {a: statistics.median(r["wall"]) for a, r in results.items()}
    calls = {a: sorted(set(r["calls"])) for a, r in results.items()}
    strict, per_resource = minimum_calls(n_instances, service_ports=has_ports)
    rh_calls = statistics.median(results["rehearse"]["calls"])
    fmt_calls = lambda c: str(c[0]) if len(c) == 1 else f"{c[0]}–{c[-1]}"  # noqa: E731
    rh, bo, b0 = results["rehearse"], results["boto3"], results["boto3-nofloor"]
    n = len(rh["wall"])
    total = [t / 1000 for t in rh["extra"]]
    life = [x["lifecycle_ms"] / 1000 for x in bo["extra"]]
    life0 = [x["lifecycle_ms"] / 1000 for x in b0["extra"]]
    floor = FLOOR_SLEEPS * POLL_FIRST_MS / 1000
    rh_out = [w - t for w, t in zip(rh["wall"], total)]
    bo_out = [w - t for w, t in zip(bo["wall"], life)]
    compilers = sum(1 for x in loads if x["rustc"] or x["cargo"])
    say("## Full AWS lifecycle of shop-aws.yaml against the emulator")
    say()
    say(f"`{COMMAND}` ({time.strftime('%Y-%m-%d', time.gmtime())}, {loads[0]['at']}–{loads[-1]['at']}; moto "
        f"{moto_version} on 127.0.0.1, {aws_version.split()[0]}, boto3 {boto3.__version__}; {os.cpu_count()} cores; "
        f"1-minute load average {min(x['load1'] for x in loads):.2f}–{max(x['load1'] for x in loads):.2f}, "
        f"rustc or cargo running at {compilers} of {len(loads)} samples, one before and one after each repetition). "
        f"{n} repetitions, each approach once per repetition in an order that rotates, each lifecycle on a freshly "
        f"reset and reseeded emulator, after one unmeasured warm-up lifecycle; before each repetition's lifecycles, "
        f"{STARTUP_PER_REP} start-up pairs, alternating which goes first. Times in ms: min / **median** / max; "
        "ratios are boto3's median ÷ rehearse's median, and the range of the ratio pair by pair.")
    say()
    say("Equal work: the boto3 script (`target/bench/aws/lifecycle_boto3.py`) makes rehearse's calls with rehearse's "
        "concurrency — the steps of the plan that are independent run in threads (`ThreadPoolExecutor`) as soon as "
        "what they depend on is done, and the waits share one batched poller per kind, as rehearse's do — with its "
        "clients built before its timer starts.")
    say()
    say("| row | rehearse | boto3 | boto3 ÷ rehearse | pair by pair |")
    say("|---|--:|--:|--:|--:|")
    s_r, s_b = startup["rehearse"], startup["boto3"]
    say(f"| (a) start-up, a CLI advantage: `rehearse --version` vs `startup_boto3.py` (interpreter, `import boto3`, "
        f"two clients, exit), {len(s_r)} pairs | {spread(s_r, digits=1)} | {spread(s_b)} | "
        f"{med_ratio(s_b, s_r)} | {pair_ratios(s_b, s_r)} |")
    say(f"| (a′) the same in the lifecycle runs: everything outside the timed lifecycle (rehearse: wall − `total_ms`; "
        f"boto3: wall − `lifecycle_ms`) | {spread(rh_out)} | {spread(bo_out)} | "
        f"{med_ratio(bo_out, rh_out)} | {pair_ratios(bo_out, rh_out)} |")
    say(f"| (b) the lifecycle in process, clients built, rehearse's polling schedule on both (rehearse: the report's "
        f"`total_ms`; boto3: `lifecycle_ms`) | {spread(total)} | {spread(life)} | "
        f"{med_ratio(life, total)} | {pair_ratios(life, total)} |")
    tf = [t - floor for t in total]
    lf = [x - floor for x in life]
    say(f"| (b0) the same without the polling floor: (b) minus the {FLOOR_SLEEPS} × {POLL_FIRST_MS} ms sleeps on "
        f"the critical path, on both | {spread(tf)} | {spread(lf)} | {med_ratio(lf, tf)} "
        f"| {pair_ratios(lf, tf)} |")
    say(f"| (b0′) boto3 run with no polling sleep at all (`BENCH_POLL_FIRST_MS=0`), measured, against rehearse's (b0) "
        f"| | {spread(life0)} | {med_ratio(life0, tf)} | {pair_ratios(life0, tf)} |")
    say(f"| (c) whole process vs whole process | {spread(rh['wall'])} | {spread(bo['wall'])} | "
        f"{med_ratio(bo['wall'], rh['wall'])} | {pair_ratios(bo['wall'], rh['wall'])} |")
    say(f"| (c′) CPU time of the whole process (user + sys, the suite's `sh` included) | {spread(rh['cpu'])} | "
        f"{spread(bo['cpu'])} | {med_ratio(bo['cpu'], rh['cpu'])} | "
        f"{pair_ratios(bo['cpu'], rh['cpu'])} |")
    say()
    say("| approach | whole process | ÷ rehearse's | API calls |")
    say("|---|--:|--:|--:|")
    names = {"rehearse": "`rehearse run … --format json`",
             "boto3": "boto3, one process (`lifecycle_boto3.py`)",
             "boto3-nofloor": "boto3, no polling sleep (`BENCH_POLL_FIRST_MS=0 … lifecycle_boto3.py`)",
             "cli": "`aws` CLI, one process per call (`lifecycle-cli.sh`)"}
    for a in results:
        say(f"| {names[a]} | {spread(results[a]['wall'])} | {med[a] / med['rehearse']:.2f} | {fmt_calls(calls[a])} |")
    say()
    imp = [x["import_ms"] for x in bo["extra"]]
    cl = [x["clients_ms"] for x in bo["extra"]]
    sl = bo["extra"][0]["poll_sleeps_ms"]
    say(f"- (a′) covers, for rehearse, its process start, reading and validating the description, the SDK's "
        "configuration, writing the report files, printing the JSON and exit; for boto3, the interpreter's start, "
        f"`import boto3` (median {statistics.median(imp):.0f} ms), the two clients (median "
        f"{statistics.median(cl):.0f} ms), printing and exit. (b) covers, for rehearse, from the start of the run "
        "(planning, the journal, every step) to its report; for boto3, from the clients' existence to the last call.")
    say(f"- The polling floor: both poll on rehearse's schedule (first describe {POLL_FIRST_MS} ms after the change, "
        "doubling to 10 s), and on the emulator the first describe finds every resource ready. The boto3 pollers "
        f"slept {sl['databases']} ms (databases) and {sl['instances']} ms (instances) per run, of which "
        f"{FLOOR_SLEEPS * POLL_FIRST_MS} ms on the critical path (the two teardown waits run side by side). boto3 with "
        f"no sleep at all measured {statistics.median(life) - statistics.median(life0):.3f} s less than with the "
        f"floor (medians), against the {floor:.1f} s subtracted in (b0); it made {fmt_calls(calls['boto3-nofloor'])} "
        f"calls instead of {strict}: with no sleep, the instances' poller describes as soon as the first RunInstances "
        "returns, before the others are waiting, so they need rounds of their own. (b0) is therefore the "
        "floor-free comparison on equal work; (b0′) checks its subtraction.")
    if any(c != strict for a in ("rehearse", "boto3") for c in results[a]["calls"]):
        say(f"- A run of rehearse or of the boto3 script made more than {strict} calls: the instances' wait needs a second "
            "round when the three RunInstances answers come more than the first interval (100 ms) apart — the same "
            "batched poller in both; see the notes under the operation table.")
    t_boto = med["boto3"] / med["rehearse"]
    t_cli = med["cli"] / med["rehearse"]
    say()
    say("Targets (whole process, equal work): rehearse at least 2× faster than the boto3 script — "
        f"**{'met' if t_boto >= 2 else 'not met'}** ({t_boto:.2f}×; the lifecycle alone, (b): "
        f"{statistics.median(life) / statistics.median(total):.2f}×); at least 20× faster than the CLI script — "
        f"**{'met' if t_cli >= 20 else 'not met'}** ({t_cli:.2f}×); API calls within 10% of the minimum — "
        f"**{'met' if rh_calls <= strict * 1.1 else 'not met'}** against the strict minimum "
        f"({rh_calls:.0f} ÷ {strict} = {rh_calls / strict:.2f}), "
        f"{'met' if rh_calls <= per_resource * 1.1 else 'not met'} against the per-resource minimum "
        f"({rh_calls:.0f} ÷ {per_resource} = {rh_calls / per_resource:.2f}).")
    say()
    say(f"The minimum the plan needs ({n_instances} instances, 1 database restored from a snapshot, a security group, "
        "a DB subnet group), counting every call that cannot be left out without giving up a documented behaviour, "
        "one describe per wait (a wait that finds its resource ready at the first look), and batching only where "
        "one call can serve several resources:")
    say()
    say("- provision: CreateDBSubnetGroup, CreateSecurityGroup (with no ingress) (2); AuthorizeSecurityGroupIngress "
        "for the services' ports (TCP, from allow_cidrs and the group), as soon as the group exists (1); find the "
        "backup: DescribeDBInstances of production + DescribeDBSnapshots, one page (2); "
        "RestoreDBInstanceFromDBSnapshot (1); wait available, whose answer also carries the tags the guard checks (1); "
        "ModifyDBInstance (1); wait available again and verify (1); AuthorizeSecurityGroupIngress for the copy's "
        "port, which may open only now that the copy no longer has production's password (1); RunInstances per "
        f"planned instance, each with its own tags and client token ({n_instances}); one DescribeInstances for all "
        "instances: running (1);")
    say("- teardown: instances — one DescribeInstances as the guard for all, one TerminateInstances for all, one wait "
        "(3); database — DescribeDBInstances (guard), DeleteDBInstance, one wait until gone (3); DB subnet group — "
        "DescribeDBSubnetGroups + ListTagsForResource (its tags are only readable there) as the guard, "
        "DeleteDBSubnetGroup (3); security group — DescribeSecurityGroups (guard), DeleteSecurityGroup (2).")
    say(f"- strict minimum: **{strict}**. The per-resource minimum, which guards and terminates each instance with "
        f"its own calls (2 × {n_instances} instead of 2), is **{per_resource}**.")
    say(f"- The two ingress calls are counted as needed because the services' ports open as soon as the group "
        "exists (a service that does not use a database need not wait for one) while the copy's port must wait for "
        "the password rotation. In this shop every instance uses the database and so waits for the second call "
        f"anyway: one call after the rotation opening both ports would serve it, giving {strict - 1} "
        f"({rh_calls:.0f} ÷ {strict - 1} = {rh_calls / (strict - 1):.2f}).")
    say()
    say("Calls by operation (first run of each approach, from moto's recorder):")
    say()
    ops = {a: summarize_ops(results[a]["ops"] or []) for a in results}
    order = []
    for a in ("rehearse", "boto3", "cli"):
        for o in results[a]["ops"] or []:
            if o not in order:
                order.append(o)
    say("| operation | rehearse | boto3 | aws CLI |")
    say("|---|--:|--:|--:|")
    for o in order:
        say(f"| {o} | {ops['rehearse'].get(o, 0)} | {ops['boto3'].get(o, 0)} | {ops['cli'].get(o, 0)} |")
    say(f"| **total** | {sum(ops['rehearse'].values())} | {sum(ops['boto3'].values())} | {sum(ops['cli'].values())} |")
    say()
    for a in (x for x in results if x != "boto3-nofloor"):
        for other in results[a].get("other_ops", []):
            if sorted(other) == sorted(results[a]["ops"]):
                continue  # the same calls in another order: compare_with_rehearse covers order
            say(f"- note: another run of {a} made different calls: {summarize_ops(other)}")
    for line in compare_with_rehearse(results):
        say(line)
    say()
    if reports:
        say("Where rehearse's time goes (its report's steps, median over the runs; start is from the run's start):")
        say()
        steps = {}
        for rj in reports:
            for s in rj.get("steps", []):
                k = (s.get("resource"), s.get("action"))
                steps.setdefault(k, []).append((s.get("start_ms", 0), s.get("duration_ms", 0)))
        for rj in reports:
            for ph in rj.get("phases", []):
                if ph.get("status") != "skipped":
                    steps.setdefault((f"phase `{ph['phase']}`", ""), []).append((ph["start_ms"], ph["duration_ms"]))
        say("| resource | action | start | duration |")
        say("|---|---|--:|--:|")
        for (res, act), v in sorted(steps.items(), key=lambda kv: (statistics.median(x[0] for x in kv[1]),
                                                                    not kv[0][0].startswith("phase"))):
            say(f"| {res} | {act} | {statistics.median(x[0] for x in v):.0f} ms | "
                f"{statistics.median(x[1] for x in v):.0f} ms |")
        say()


if __name__ == "__main__":
    if SERVE:
        serve()
    else:
        main()
