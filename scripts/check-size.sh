#!/usr/bin/env bash
# Checks the size of the code's units (part of `make lint`):
#   - no function in src/ over 150 lines;
#   - no file in src/ over 600 lines unless its module doc says why it is kept whole
#     (a `//!` line that says "one file" or "kept whole", and why).
# Strings, chars and comments are blanked before braces are counted. Exits 1 on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import pathlib, re, sys

FN_LIMIT, FILE_LIMIT = 150, 600

def blank(text):
    """The text with strings, chars and comments turned to spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    keep = lambda s: re.sub(r'[^\n]', ' ', s)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i); j = n if j < 0 else j
        elif text.startswith('/*', i):
            j = text.find('*/', i + 2); j = n if j < 0 else j + 2
        elif c == 'r' and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == '_')):
            m = re.match(r'r(#*)"', text[i:]); end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0))); j = n if j < 0 else j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            j += 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^'\\])'", text[i:])):
            j = i + len(m.group(0))
        else:
            out.append(c); i += 1; continue
        out.append(keep(text[i:j])); i = j
    return ''.join(out)

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')
bad = []
for p in sorted(pathlib.Path("src").rglob("*.rs")):
    text = p.read_text()
    raw, code = text.split('\n'), blank(text).split('\n')
    if len(text.splitlines()) > FILE_LIMIT:
        doc = [l for l in raw if l.startswith('//!')]
        if not any(re.search(r"one file|kept whole", l, re.I) for l in doc):
            bad.append(f"{p}: {len(text.splitlines())} lines, over {FILE_LIMIT}, and its module doc does not say why it is kept as one file")
    for i, line in enumerate(raw):
        m = FN.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(code):
            for ch in code[j]:
                if ch == '{': depth += 1; started = True
                elif ch == '}': depth -= 1
            if (started and depth <= 0) or (not started and code[j].rstrip().endswith(';')):
                break
            j += 1
        if started and j - i + 1 > FN_LIMIT:
            bad.append(f"{p}:{i + 1}: fn {m.group(6)} is {j - i + 1} lines, over {FN_LIMIT}")
for b in bad:
    print(f"size: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
