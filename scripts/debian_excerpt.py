#!/usr/bin/env python3
"""Writes tests/data/debian_excerpt.txt: a small, fixed excerpt of Debian's
English package descriptions for the debian_search smoke test (meson test
debian_search_smoke).

Usage: scripts/debian_excerpt.py [OUT] [--max-bytes N (190000)]
Reads apt's Translation-en lists (/var/lib/apt/lists/*_main_i18n_Translation-en*,
decompressed by /usr/lib/apt/apt-helper; see scripts/debian_corpus.sh), keeps
the first record of each package whose MD5(name) is 0 mod 200 (a fixed
pseudo-random 1/200 of the packages, independent of the list's order and of
debian_corpus.h's FNV-1a held-out split) and has a non-empty synopsis and
long description, in ascending name order, until the file would exceed
--max-bytes. Records are copied verbatim.
"""
import glob
import hashlib
import subprocess
import sys


def records(text):
    rec = []
    for line in text.split("\n"):
        if line.strip() == "":
            if rec:
                yield rec
            rec = []
        else:
            rec.append(line)
    if rec:
        yield rec


def main():
    args = sys.argv[1:]
    out, max_bytes = "tests/data/debian_excerpt.txt", 190000
    i = 0
    while i < len(args):
        if args[i] == "--max-bytes":
            max_bytes = int(args[i + 1])
            i += 2
        else:
            out = args[i]
            i += 1
    lists = sorted(glob.glob("/var/lib/apt/lists/*_main_i18n_Translation-en*"))
    if not lists:
        sys.exit("no Translation-en list: run apt-get update -o Acquire::Languages=en")
    keep = {}
    for path in lists:
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True,
                              capture_output=True).stdout.decode("utf-8", "replace")
        for rec in records(text):
            name = next((l[9:] for l in rec if l.startswith("Package: ")), None)
            syn = next((l for l in rec if l.startswith("Description-en: ")), None)
            body = [l for l in rec if l.startswith(" ") and l != " ."]
            if not name or not syn or len(syn) <= 16 or not body or name in keep:
                continue
            if int(hashlib.md5(name.encode()).hexdigest(), 16) % 200 == 0:
                keep[name] = "\n".join(rec) + "\n\n"
    size, n = 0, 0
    with open(out, "w", encoding="utf-8") as f:
        for name in sorted(keep):
            r = keep[name]
            if size + len(r.encode()) > max_bytes:
                break
            f.write(r)
            size += len(r.encode())
            n += 1
    print("%s: %d packages, %d bytes" % (out, n, size), file=sys.stderr)


if __name__ == "__main__":
    main()
