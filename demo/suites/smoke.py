#!/usr/bin/env python3
"""Smoke suite: is the shop up and answering sensibly?

Environment:
  SHOP_URL             base URL of the running shop, e.g. http://127.0.0.1:8080 (required)
  SHOP_RELEASE         expected /version; falls back to REHEARSE_RELEASE; when neither
                       is set, /version only has to be non-empty
  REHEARSE_JUNIT_PATH  where to write the JUnit XML (else argv[1], else ./smoke.xml)

Exit status 1 if any check failed, else 0. Every HTTP call times out after 5 s.
"""

import json
import os
import sys
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from junit import Suite  # noqa: E402  (the helper next to this file)

TIMEOUT_SECONDS = 5
BASE_URL = os.environ.get("SHOP_URL", "").rstrip("/")
EXPECTED_RELEASE = os.environ.get("SHOP_RELEASE") or os.environ.get("REHEARSE_RELEASE")


def get(path):
    """GET a path of the shop; return (status, body text). Non-2xx is not an error."""
    assert BASE_URL, "SHOP_URL is not set"
    try:
        with urllib.request.urlopen(BASE_URL + path, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def get_json(path):
    status, body = get(path)
    assert status == 200, f"GET {path} answered {status}: {body.strip()[:200]}"
    try:
        return json.loads(body)
    except ValueError:
        raise AssertionError(f"GET {path} did not return JSON: {body[:200]!r}") from None


def health_is_ok():
    status, body = get("/health")
    assert status == 200, f"GET /health answered {status}: {body.strip()[:200]}"
    assert body.strip() == "ok", f"GET /health answered {body.strip()[:200]!r}, not 'ok'"


def version_is_the_release():
    status, body = get("/version")
    assert status == 200, f"GET /version answered {status}"
    version = body.strip()
    assert version, "GET /version answered an empty version"
    if EXPECTED_RELEASE:
        assert version == EXPECTED_RELEASE, \
            f"GET /version answered {version!r}, expected {EXPECTED_RELEASE!r}"


def products_are_listed():
    products = get_json("/products")
    assert isinstance(products, list), f"GET /products returned {type(products).__name__}, not a list"
    assert products, "GET /products returned an empty list"
    missing = {"id", "sku", "name", "price_cents"} - set(products[0])
    assert not missing, f"products lack fields {sorted(missing)}"


def customers_are_counted():
    answer = get_json("/customers/count")
    count = answer.get("count") if isinstance(answer, dict) else None
    assert isinstance(count, int), f"GET /customers/count returned {answer!r}"
    assert count > 0, f"GET /customers/count says there are {count} customers"


def main():
    suite = Suite("smoke")
    suite.check("health is ok", health_is_ok)
    suite.check("version is the release", version_is_the_release)
    suite.check("products are listed", products_are_listed)
    suite.check("customers are counted", customers_are_counted)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
