"""A tiny test runner shared by the demo suites: runs checks, writes JUnit XML.

Each check is a function that raises to fail: an AssertionError's message is the
failure; any other exception is a failure too, with its traceback as details. The
report goes to $REHEARSE_JUNIT_PATH, else to the first command-line argument, else
to ./<suite>.xml, in the common JUnit layout:

  <testsuites name tests failures errors time>
    <testsuite name tests failures errors skipped time timestamp>
      <testcase classname name time>[<failure message type>details</failure>]

Progress goes to stdout, one line per check.
"""

import datetime
import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET


class Suite:
    def __init__(self, name):
        self.name = name
        self.cases = []  # (name, seconds, failure message or None, error type, details)
        self.started = time.monotonic()
        self.timestamp = datetime.datetime.now(datetime.timezone.utc)

    def check(self, name, func, *args):
        begin = time.monotonic()
        failure = kind = details = None
        try:
            func(*args)
        except AssertionError as err:
            failure = str(err) or "assertion failed"
            kind, details = type(err).__name__, failure
        except Exception as err:  # an unexpected error is a failed check, not a crash
            failure = f"{type(err).__name__}: {err}"
            kind, details = type(err).__name__, traceback.format_exc()
        seconds = time.monotonic() - begin
        self.cases.append((name, seconds, failure, kind, details))
        if failure is None:
            print(f"ok    {name} ({seconds:.3f}s)", flush=True)
        else:
            print(f"FAIL  {name} ({seconds:.3f}s): {failure}", flush=True)

    def failures(self):
        return sum(1 for case in self.cases if case[2] is not None)

    def write_junit(self):
        path = (os.environ.get("REHEARSE_JUNIT_PATH")
                or (sys.argv[1] if len(sys.argv) > 1 else f"{self.name}.xml"))
        total = f"{time.monotonic() - self.started:.3f}"
        counts = {"tests": str(len(self.cases)), "failures": str(self.failures()),
                  "errors": "0"}
        root = ET.Element("testsuites", name=self.name, time=total, **counts)
        suite = ET.SubElement(root, "testsuite", name=self.name, skipped="0", time=total,
                              timestamp=self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              **counts)
        for name, seconds, failure, kind, details in self.cases:
            case = ET.SubElement(suite, "testcase", classname=self.name, name=name,
                                 time=f"{seconds:.3f}")
            if failure is not None:
                element = ET.SubElement(case, "failure", message=failure, type=kind)
                element.text = details
        ET.indent(root)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        partial = path + ".partial"
        with open(partial, "wb") as file:
            file.write(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
        os.replace(partial, path)
        return path

    def finish(self):
        """Write the report; return the exit status (1 if any check failed)."""
        path = self.write_junit()
        failed = self.failures()
        print(f"{self.name}: {len(self.cases) - failed} passed, {failed} failed; "
              f"JUnit report in {path}", flush=True)
        return 1 if failed or not self.cases else 0
