#!/usr/bin/env python3
"""The AWS lifecycle benchmark: wall time and API calls of the full rehearsal of
environments/shop-aws.yaml against the moto emulator, beside the same calls scripted
with boto3 (one process) and with the `aws` CLI (one process per call), in one run.

    python3 scripts/bench_aws.py          # BENCH_AWS_REPS=3 by default
    python3 scripts/bench_aws.py --trace  # one run each through a timestamping relay:
                                          # every call's time, written to target/bench/aws-trace.md

Needs target/release/rehearse and .venv (scripts/install-deps.sh --emulator) with
boto3 and awscli (`.venv/bin/pip install awscli`). Re-executes itself with the venv's
Python. Every request goes to a moto_server on 127.0.0.1 started here (and stopped by
PID at the end); credentials are dummies and no AWS configuration file is read.

For each repetition and approach: reset moto, seed "production" as
tests/aws_emulator.rs does, then time the approach as a whole process and count the
requests it made from moto's request log (one line per request). Both scripts make the
same calls as rehearse in the same order, one at a time: where rehearse has calls of
independent steps in flight together, the scripts send them one after the other in
rehearse's order (so the instances' and the database's teardown share one wait, as in
rehearse). Same guard describes; same polling (first describe 100 ms after a change,
doubling up to 10 s: rehearse's POLL_FIRST and POLL_MAX); the same two ingress calls
(TCP to the services' ports once the group exists, TCP to the copy's port only once
the copy has the run's password); and, like rehearse's SDK, one attempt per call (no
retries by boto3 or the CLI). The scripts are written to target/bench/aws/ so they can
be read and rerun. Each script's calls are compared with rehearse's (the same calls;
no order that rehearse kept in all its runs reversed) and any difference is printed.

Prints a Markdown section and writes it to target/bench/aws.md.
"""
import base64, json, os, re, secrets, shlex, shutil, socket, statistics, subprocess, sys, tempfile, time
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
REPS = 1 if TRACE else int(os.environ.get("BENCH_AWS_REPS", "3"))
REGION = "eu-west-1"
RELEASE = "v2"
SUITE = 'test -n "$SHOP_URL" && test -n "$DATABASE_URL" && test -n "$REHEARSE_SERVICE_WORKER_URL"'
COMMAND = "python3 scripts/bench_aws.py"
REQUEST_LINE = re.compile(r'"(GET|POST|PUT|DELETE|HEAD|PATCH) (\S+) HTTP/[0-9.]+" \d{3}')
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
                m = REQUEST_LINE.search(l)
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

def variant(prod, path: Path):
    """environments/shop-aws.yaml with the emulator's ids, as tests/aws_emulator.rs
    `shop_description` builds it: no masking, no health checks, one exit-code suite
    that only checks its environment (nothing is sent to the instances' 10.x
    addresses)."""
    text = (ROOT / "environments/shop-aws.yaml").read_text()
    text = (text.replace("ami-0abcdef1234567890", prod["ami"])
            .replace("vpc-0a1b2c3d4e5f60718", prod["vpc"])
            .replace("subnet-0a1b2c3d4e5f60001", prod["subnets"][0])
            .replace("subnet-0a1b2c3d4e5f60002", prod["subnets"][1])
            .replace("../templates/", f"{ROOT}/templates/")
            .replace("    masking: ../demo/masking.sql\n", "")
            .replace("    health:\n      path: /health\n      timeout: 5m\n", ""))
    a, b = text.index("\nsuites:\n"), text.index("\ndestroy:")
    text = text[:a] + (
        "\nsuites:\n  endpoints:\n    command: '" + SUITE + "'\n    timeout: 1m\n    uses: [web, worker]\n"
        "    results: exit-code\n    env:\n      SHOP_URL: \"{{ services.web.url }}\"\n"
        "      DATABASE_URL: \"{{ databases.db.url }}\"\n") + text[b:]
    assert "health:" not in text and "masking:" not in text
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
    suffix = run_id.removeprefix("r-").replace("-", "")
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
rehearse makes, in the same order, sequentially. Usage: lifecycle_boto3.py PARAMS.json
(written by scripts/bench_aws.py). Prints {"import_ms", "lifecycle_ms"} as JSON."""
import time
T_START = time.monotonic()
import json, secrets, string, subprocess, sys, os
import boto3
from botocore.config import Config

T_IMPORTED = time.monotonic()
p = json.load(open(sys.argv[1]))
RUN = p["run_id"]
session = boto3.session.Session(region_name=p["region"])
# As rehearse's SDK: one attempt per call (rehearse decides every repeat above the SDK,
# and on a healthy endpoint repeats nothing).
cfg = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3)
ec2 = session.client("ec2", config=cfg)
rds = session.client("rds", config=cfg)


def tag(tags, key):
    return next((t["Value"] for t in tags or [] if t["Key"] == key), None)


def guard(what, ident, tags):
    if tag(tags, "rehearse:run-id") != RUN:
        sys.exit(f"refusing to change {what} {ident}: not tagged rehearse:run-id={RUN}")


def wait(describe, done, what, timeout=1800):
    """First describe 100 ms after the change, then doubling up to 10 s."""
    deadline, interval = time.monotonic() + timeout, 0.1
    while True:
        time.sleep(interval)
        interval = min(interval * 2, 10)
        seen = describe()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")


def describe_db():
    return rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [p["db_id"]]}])["DBInstances"]


def describe_instances(ids):
    return [i for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
            for r in page["Reservations"] for i in r["Instances"]]


def authorize(ports):
    """TCP only, one permission per port, from allow_cidrs and from the group itself."""
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": sg}],
        "IpRanges": [{"CidrIp": c, "Description": "rehearse: allowed in"} for c in p["cidrs"]]}
        for port in sorted(set(ports))])


# Network: the run's security group (created with no ingress) and DB subnet group, then
# the services' ports opened (TCP, from allow_cidrs and the group itself).
sg = ec2.create_security_group(GroupName=p["name"], Description=f"rehearse run {RUN} of {p['env']}", VpcId=p["vpc"],
                               TagSpecifications=[{"ResourceType": "security-group", "Tags": p["tags_sg"]}])["GroupId"]
rds.create_db_subnet_group(DBSubnetGroupName=p["name"], DBSubnetGroupDescription=f"rehearse run {RUN}",
                           SubnetIds=p["subnets"], Tags=p["tags_subnet_group"])
if p["service_ports"]:
    authorize(p["service_ports"])

# The newest available snapshot of production (by SnapshotCreateTime, all pages).
src = p["source_db"]
prod = rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [src]}])["DBInstances"]
if not any(d["DBInstanceIdentifier"] == src for d in prod):
    sys.exit(f"the production RDS instance {src} does not exist")
snaps = [s for page in rds.get_paginator("describe_db_snapshots").paginate(DBInstanceIdentifier=src)
         for s in page["DBSnapshots"]]
snap = max((s for s in snaps if s.get("DBInstanceIdentifier") == src and s["Status"] == "available"
            and s.get("SnapshotCreateTime")), key=lambda s: s["SnapshotCreateTime"])

# Restore, wait, secure (private, no deletion protection, new password), wait again.
rds.restore_db_instance_from_db_snapshot(
    DBInstanceIdentifier=p["db_id"], DBSnapshotIdentifier=snap["DBSnapshotIdentifier"], DBInstanceClass=p["db_class"],
    DBSubnetGroupName=p["name"], VpcSecurityGroupIds=[sg], PubliclyAccessible=False, DeletionProtection=False,
    CopyTagsToSnapshot=False, Tags=p["tags_db"])
db = wait(describe_db, lambda d: d and d[0]["DBInstanceStatus"] == "available", p["db_id"])[0]
guard("DB instance", p["db_id"], db.get("TagList"))
alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
password = "".join(secrets.choice(alphabet) for _ in range(32))
rds.modify_db_instance(DBInstanceIdentifier=p["db_id"], MasterUserPassword=password, PubliclyAccessible=False,
                       DeletionProtection=False, ApplyImmediately=True)
db = wait(describe_db, lambda d: d and d[0]["DBInstanceStatus"] == "available", p["db_id"])[0]
if db.get("PubliclyAccessible") or db.get("DeletionProtection"):
    sys.exit(f"{p['db_id']} is still public or deletion protected")
host, port = db["Endpoint"]["Address"], db["Endpoint"].get("Port", 5432)
db_url = f"postgres://{db.get('MasterUsername', 'postgres')}:{password}@{host}:{port}/{p['db_name']}"

# Only now, with production's password gone from the copy, is the copy's port opened.
authorize([port])

# One RunInstances per planned instance, then one describe per interval for all of them.
user_data = p["user_data"].replace("@DB_ENDPOINT@", f"{host}:{port}")
ids = []
for i in p["instances"]:
    r = ec2.run_instances(
        ImageId=i["image"], InstanceType=i["type"], MinCount=1, MaxCount=1, SubnetId=i["subnet"],
        SecurityGroupIds=[sg], UserData=user_data, ClientToken=i["client_token"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": i["tags"]}, {"ResourceType": "volume", "Tags": i["tags"]}])
    ids.append(r["Instances"][0]["InstanceId"])
running = wait(lambda: describe_instances(ids),
               lambda found: len(found) == len(ids) and all(x["State"]["Name"] == "running" for x in found), "instances")
address = {x["InstanceId"]: x.get("PrivateIpAddress", "") for x in running}


def url(n):
    i = p["instances"][n]
    a = address[ids[n]]
    return f"http://{a}:{i['port']}" if i["port"] else f"http://{a}"


first = {}
for n, i in enumerate(p["instances"]):
    first.setdefault(i["service"], n)

# The suite, with the endpoints in its environment.
env = dict(os.environ, SHOP_URL=url(first[p["web_service"]]), DATABASE_URL=db_url,
           REHEARSE_SERVICE_WORKER_URL=url(first[p["worker_service"]]))
suite = subprocess.run(["sh", "-c", p["suite"]], env=env)

# Teardown, as rehearse does it (by rank: the instances and the database together, then
# the two groups), with its calls in its order, one at a time: the guard describes
# (one for all instances, one for the database), one TerminateInstances for all, the
# DeleteDBInstance, then one wait for both (each round describes what is not yet gone,
# on the same schedule); then both groups looked up and their tags checked (the subnet
# group's tags are only readable with ListTagsForResource), the security group deleted
# (retrying DependencyViolation), the subnet group deleted.
found = describe_instances(ids)
for x in found:
    guard("instance", x["InstanceId"], x.get("Tags"))
alive = [x["InstanceId"] for x in found if x["State"]["Name"] != "terminated"]
d = describe_db()
if d:
    guard("DB instance", p["db_id"], d[0].get("TagList"))
if alive:
    ec2.terminate_instances(InstanceIds=alive)
if d:
    rds.delete_db_instance(DBInstanceIdentifier=p["db_id"], SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
pending = {"instances terminated": lambda: all(x["State"]["Name"] == "terminated" for x in describe_instances(ids))}
if d:
    pending[f"{p['db_id']} gone"] = lambda: not describe_db()
deadline, interval = time.monotonic() + 2700, 0.1
while pending:
    time.sleep(interval)
    interval = min(interval * 2, 10)
    for what, done in list(pending.items()):
        if done():
            del pending[what]
    if pending and time.monotonic() > deadline:
        sys.exit(f"timed out waiting for {', '.join(pending)}")
g = rds.describe_db_subnet_groups(DBSubnetGroupName=p["name"])["DBSubnetGroups"][0]
sg_found = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]
guard("DB subnet group", p["name"], rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"])["TagList"])
guard("security group", sg, sg_found.get("Tags"))
delay = 0.5
while True:
    try:
        ec2.delete_security_group(GroupId=sg)
        break
    except ec2.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "DependencyViolation":
            raise
        time.sleep(delay)
        delay = min(delay * 2, 15)
rds.delete_db_subnet_group(DBSubnetGroupName=p["name"])
t_end = time.monotonic()
print(json.dumps({"import_ms": round((T_IMPORTED - T_START) * 1000), "lifecycle_ms": round((t_end - T_IMPORTED) * 1000),
                  "suite_exit": suite.returncode}))
sys.exit(0 if suite.returncode == 0 else 1)
'''

CLI_SCRIPT = r'''#!/usr/bin/env bash
# The shop-aws rehearsal lifecycle scripted with the aws CLI: one `aws` process per
# call, the same calls rehearse makes, in the same order, sequentially.
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

# Network: the run's security group (created with no ingress) and DB subnet group, then
# the services' ports opened (TCP, from allow_cidrs and the group itself).
sg=$(aws ec2 create-security-group --group-name "$NAME" --description "rehearse run $RUN of $ENV_NAME" --vpc-id "$VPC" \
  --tag-specifications "$TAGSPEC_SG" --query GroupId --output text)
aws rds create-db-subnet-group --db-subnet-group-name "$NAME" --db-subnet-group-description "rehearse run $RUN" \
  --subnet-ids "${SUBNETS[@]}" --tags "$TAGS_SUBNET_GROUP" --query DBSubnetGroup.DBSubnetGroupName --output text >/dev/null
[ ${#SERVICE_PORTS[@]} -eq 0 ] || authorize "${SERVICE_PORTS[@]}"

# The newest available snapshot of production (by SnapshotCreateTime, all pages).
n=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$SOURCE_DB" \
  --query "length(DBInstances[?DBInstanceIdentifier=='$SOURCE_DB'])" --output text)
[ "$n" -ge 1 ] || { echo "the production RDS instance $SOURCE_DB does not exist" >&2; exit 1; }
snap=$(aws rds describe-db-snapshots --db-instance-identifier "$SOURCE_DB" \
  --query "reverse(sort_by(DBSnapshots[?DBInstanceIdentifier=='$SOURCE_DB' && Status=='available' && SnapshotCreateTime], &SnapshotCreateTime))[0].DBSnapshotIdentifier" \
  --output text)
[ -n "$snap" ] && [ "$snap" != None ] || { echo "no available snapshot of $SOURCE_DB" >&2; exit 1; }

# Restore, wait, secure (private, no deletion protection, new password), wait again.
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

# One RunInstances per planned instance, then one describe per interval for all of them.
user_data=${USER_DATA//@DB_ENDPOINT@/$host:$port}
ids=()
for n in "${!INST_RES[@]}"; do
  ids+=("$(aws ec2 run-instances --image-id "${INST_IMAGE[$n]}" --instance-type "${INST_TYPE[$n]}" --count 1 \
    --subnet-id "${INST_SUBNET[$n]}" --security-group-ids "$sg" --user-data "$user_data" \
    --client-token "${INST_TOKEN[$n]}" --tag-specifications "${INST_TAGSPEC[$n]}" \
    --query 'Instances[0].InstanceId' --output text)")
done
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

# Teardown, as rehearse does it (by rank: the instances and the database together, then
# the two groups), with its calls in its order, one at a time: the guard describes
# (one for all instances, one for the database), one terminate-instances for all, the
# delete-db-instance, then one wait for both (each round describes what is not yet
# gone, on the same schedule); then both groups looked up and their tags checked, the
# security group deleted (retrying DependencyViolation), the subnet group deleted.
alive=()
while read -r i st owner; do
  [ -n "$i" ] || continue
  guard instance "$i" "$owner"
  [ "$st" = terminated ] || alive+=("$i")
done < <(aws ec2 describe-instances --instance-ids "${ids[@]}" \
           --query "Reservations[].Instances[].[InstanceId,State.Name,$TAG]" --output text)
out=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$DB_ID" \
  --query "DBInstances[0].[DBInstanceStatus,TagList[?Key=='rehearse:run-id']|[0].Value]" --output text)
read -r st owner <<<"$out"
db_there=0
if [ "$st" != None ]; then
  guard "DB instance" "$DB_ID" "$owner"
  db_there=1
fi
[ ${#alive[@]} -eq 0 ] || aws ec2 terminate-instances --instance-ids "${alive[@]}" >/dev/null
[ $db_there -eq 0 ] || aws rds delete-db-instance --db-instance-identifier "$DB_ID" --skip-final-snapshot \
  --delete-automated-backups --query DBInstance.DBInstanceIdentifier --output text >/dev/null
inst_pending=1; db_pending=$db_there
ms=100; deadline=$((SECONDS + 2700))
while [ $inst_pending -eq 1 ] || [ $db_pending -eq 1 ]; do
  ms_sleep $ms; ms=$(next_ms $ms)
  if [ $inst_pending -eq 1 ]; then
    out=$(aws ec2 describe-instances --instance-ids "${ids[@]}" --query 'Reservations[].Instances[].State.Name' --output text)
    [ -n "$(tr '\t' '\n' <<<"$out" | grep -vx terminated || true)" ] || inst_pending=0
  fi
  if [ $db_pending -eq 1 ]; then
    n=$(aws rds describe-db-instances --filters "Name=db-instance-id,Values=$DB_ID" --query 'length(DBInstances)' --output text)
    [ "$n" != 0 ] || db_pending=0
  fi
  if [ $inst_pending -eq 1 ] || [ $db_pending -eq 1 ]; then
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for the instances and $DB_ID to go" >&2; exit 1; }
  fi
done
arn=$(aws rds describe-db-subnet-groups --db-subnet-group-name "$NAME" --query 'DBSubnetGroups[0].DBSubnetGroupArn' --output text)
sg_owner=$(aws ec2 describe-security-groups --group-ids "$sg" --query "SecurityGroups[0].$TAG" --output text)
owner=$(aws rds list-tags-for-resource --resource-name "$arn" --query "TagList[?Key=='rehearse:run-id']|[0].Value" --output text)
guard "DB subnet group" "$NAME" "$owner"
guard "security group" "$sg" "$sg_owner"
ms=500
until err=$(aws ec2 delete-security-group --group-id "$sg" 2>&1 >/dev/null); do
  grep -q DependencyViolation <<<"$err" || { echo "$err" >&2; exit 1; }
  ms_sleep $ms; ms=$(next_ms $ms 15000)
done
aws rds delete-db-subnet-group --db-subnet-group-name "$NAME"
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
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True)
    timed.started = t
    return time.monotonic() - t, r


def main():
    for need, how in ((BIN, "cargo build --release"), (MOTO, "scripts/install-deps.sh --emulator"),
                      (AWS, ".venv/bin/pip install awscli")):
        if not need.is_file():
            sys.exit(f"{need} is missing: {how}")
    OUT.mkdir(parents=True, exist_ok=True)
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    os.chmod(tmp, 0o711)
    (WORK / "lifecycle_boto3.py").write_text(BOTO3_SCRIPT)
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
    results = {a: {"wall": [], "calls": [], "ops": None, "runs_ops": [], "extra": []}
               for a in ("rehearse", "boto3", "cli")}
    reports = []
    aws_version = subprocess.run([str(AWS), "--version"], capture_output=True, text=True, env=env)
    aws_version = (aws_version.stdout or aws_version.stderr).strip()
    moto_version = subprocess.run([str(VPY), "-c", "import moto; print(moto.__version__)"], capture_output=True,
                                  text=True).stdout.strip()
    n_instances, has_ports = 0, True
    try:
        # Warm-up, not measured: one lifecycle by the boto3 script, so that no approach
        # pays moto's first-use costs (its first TerminateInstances in a fresh server
        # takes ~150-200 ms, later ones ~5 ms).
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
        if trace:
            trace.take()
        for rep in range(REPS):
            for approach in ("rehearse", "boto3", "cli"):
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
                    if approach == "boto3":
                        (rdir / "params.json").write_text(json.dumps(p))
                        wall, r = timed([str(VPY), str(WORK / "lifecycle_boto3.py"), str(rdir / "params.json")], env,
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
                results[approach]["calls"].append(calls)
                results[approach]["ops"] = results[approach]["ops"] or ops
                results[approach]["runs_ops"].append(ops)
                if results[approach]["ops"] != ops:
                    results[approach].setdefault("other_ops", []).append(ops)
                log(f"rep {rep + 1}/{REPS} {approach}: {wall:.2f} s, {calls} calls")
                if trace:
                    timelines[approach] = (wall, [(a - timed.started, b - timed.started, op) for a, b, op in trace.take()])
    finally:
        if trace:
            trace.stop()
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if trace:
        trace_report(timelines)
        (OUT / "aws-trace.md").write_text("\n".join(lines) + "\n")
        return
    report(results, reports, n_instances, has_ports, aws_version, moto_version)
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
    and may come in either order in a sequential script."""
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
    for a in ("boto3", "cli"):
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
        out.append(f"- {a}: {same} of {runs} runs made the same calls as rehearse; {consistent} of {runs} in an order "
                   "that keeps every order rehearse kept in all its runs (differences only between steps rehearse "
                   "runs concurrently).")
        out += notes
    return out


def report(results, reports, n_instances, has_ports, aws_version, moto_version):
    med = {a: statistics.median(r["wall"]) for a, r in results.items()}
    calls = {a: sorted(set(r["calls"])) for a, r in results.items()}
    strict, per_resource = minimum_calls(n_instances, service_ports=has_ports)
    rh_calls = statistics.median(results["rehearse"]["calls"])
    fmt_calls = lambda c: str(c[0]) if len(c) == 1 else f"{c[0]}–{c[-1]}"  # noqa: E731
    say("## Full AWS lifecycle of shop-aws.yaml against the emulator")
    say()
    say(f"`{COMMAND}` (one run; {time.strftime('%Y-%m-%d', time.gmtime())}; moto {moto_version} on 127.0.0.1, "
        f"{aws_version.split()[0]}, boto3 {boto3.__version__}; {os.cpu_count()} cores). Each approach ran "
        f"{REPS} times, interleaved, each time on a freshly reset and reseeded emulator, after one unmeasured "
        "warm-up lifecycle; wall time of the whole process (start-up and exit included), median; API calls "
        "counted from moto's request log (the lines added while the approach ran).")
    say()
    say("| approach | median wall time | runs | API calls | time ÷ rehearse's |")
    say("|---|--:|---|--:|--:|")
    names = {"rehearse": "`rehearse run … --format json`",
             "boto3": "boto3, one process (`target/bench/aws/lifecycle_boto3.py`)",
             "cli": "`aws` CLI, one process per call (`target/bench/aws/lifecycle-cli.sh`)"}
    for a in ("rehearse", "boto3", "cli"):
        runs = ", ".join(f"{w:.2f}" for w in results[a]["wall"])
        say(f"| {names[a]} | {med[a]:.2f} s | {runs} | {fmt_calls(calls[a])} | {med[a] / med['rehearse']:.2f} |")
    # Start-up and exit in their own rows: rehearse's report's own total (from the run's
    # start to its report), and the boto3 script's import and its lifecycle after it.
    totals = [t / 1000 for t in results["rehearse"]["extra"] if t is not None]
    if totals:
        say(f"| ↳ rehearse: its report's `total_ms` (process start, loading, planning and exit excluded) | "
            f"{statistics.median(totals):.2f} s | {', '.join(f'{t:.2f}' for t in totals)} | | "
            f"{statistics.median(totals) / med['rehearse']:.2f} |")
    b_extra = results["boto3"]["extra"]
    if b_extra:
        imp = [x["import_ms"] / 1000 for x in b_extra]
        life = [x["lifecycle_ms"] / 1000 for x in b_extra]
        rest = [w - i - l for w, i, l in zip(results["boto3"]["wall"], imp, life)]
        say(f"| ↳ boto3: `import boto3` | {statistics.median(imp):.2f} s | {', '.join(f'{t:.2f}' for t in imp)} | | "
            f"{statistics.median(imp) / med['rehearse']:.2f} |")
        say(f"| ↳ boto3: the lifecycle after the import (clients' creation included) | {statistics.median(life):.2f} s | "
            f"{', '.join(f'{t:.2f}' for t in life)} | | {statistics.median(life) / med['rehearse']:.2f} |")
        say(f"| ↳ boto3: the rest (interpreter start before the import, exit) | {statistics.median(rest):.2f} s | "
            f"{', '.join(f'{t:.2f}' for t in rest)} | | {statistics.median(rest) / med['rehearse']:.2f} |")
    say()
    b_extra = results["boto3"]["extra"]
    if b_extra:
        say(f"- boto3's process: Python start + `import boto3` median "
            f"{statistics.median(x['import_ms'] for x in b_extra):.0f} ms, the lifecycle itself median "
            f"{statistics.median(x['lifecycle_ms'] for x in b_extra):.0f} ms.")
    totals = [t for t in results["rehearse"]["extra"] if t is not None]
    if totals:
        say(f"- rehearse's own report: `total_ms` median {statistics.median(totals):.0f} ms.")
    say("- Every approach waits five times (database available after the restore and after the modify, "
        "instances running, then instances terminated and database gone together, as one wait) on the same "
        "schedule: the first describe 100 ms after the change, which on the emulator already finds the resource "
        "ready. So about 0.4 s of each approach's time is that schedule, whoever runs it.")
    say("- The scripts make their calls one at a time; rehearse has calls of independent steps in flight together "
        "(the two groups' creation, the services' ingress beside the backup search, the three RunInstances, the "
        "instances' and the database's guard, delete and wait calls, the two groups' deletion). Those overlaps, "
        "a few milliseconds each on the emulator, are part of what the table measures.")
    n_cli = statistics.median(results["cli"]["calls"])
    say(f"- The CLI script spends about {med['cli'] / n_cli * 1000:.0f} ms per call ({n_cli:.0f} `aws` processes).")
    t_boto = med["boto3"] / med["rehearse"]
    t_cli = med["cli"] / med["rehearse"]
    say()
    say("Targets: rehearse at least 2× faster than the boto3 script — "
        f"**{'met' if t_boto >= 2 else 'not met'}** ({t_boto:.2f}×); at least 20× faster than the CLI script — "
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
    for a in results:
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
    main()
