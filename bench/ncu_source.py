#!/usr/bin/env python3
"""Where a kernel's warps stall, instruction by instruction, from Nsight Compute's source page.

    ncu ... --section SourceCounters --section WarpStateStats -o REP <program>
    ncu -i REP.ncu-rep --page source --csv --print-source sass > SRC.csv
    python3 bench/ncu_source.py SRC.csv [--top 25]

The page has one row a SASS instruction: its address, its text and the warp-state samples
taken while a warp sat on it (ncu's PC sampling), in all and by stall reason. Its column names
differ between ncu versions ("Warp Stall Sampling (All Samples)" or "# Samples" for the total;
"stall_<reason>" or "smsp__pcsamp_warps_issue_stalled_<reason>" for the reasons), so they are
found by those patterns. Prints the kernel's samples by reason (share of all), then the TOP
instructions by samples, each with its share, its two largest reasons and its text, then the
samples by opcode (the instruction's first word, predicates dropped). Python's standard library
only (the GPU machine runs it).
"""
import argparse
import collections
import csv
import sys

TOTAL_NAMES = ("Warp Stall Sampling (All Samples)", "# Samples")
REASON_PREFIXES = ("smsp__pcsamp_warps_issue_stalled_", "stall_")


def number(text):
    text = (text or "").replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return 0.0


def read(path):
    """(header, rows): the first row naming a "Source" column is the header; rows of another
    length (a kernel's title, units) are skipped."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for i, r in enumerate(rows):
        if "Source" in r and any(n in r for n in TOTAL_NAMES):
            return r, [x for x in rows[i + 1:] if len(x) == len(r)]
    raise ValueError(f"{path}: no header with a Source column and one of "
                     f"{', '.join(repr(n) for n in TOTAL_NAMES)} (ncu --page source --csv "
                     f"--print-source sass, of a report with the SourceCounters section)")


def reason_columns(header):
    """{column index: the reason's short name}: the stall reasons, not their not-issued twins."""
    out = {}
    for i, name in enumerate(header):
        for p in REASON_PREFIXES:
            if name.startswith(p) and not name.endswith("_not_issued"):
                out[i] = name[len(p):]
    return out


def opcode(source):
    words = source.split()
    if words and words[0].startswith("@"):  # a predicate
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def summary(path, top):
    header, rows = read(path)
    total_col = next(header.index(n) for n in TOTAL_NAMES if n in header)
    src_col, addr_col = header.index("Source"), header.index("Address") if "Address" in header \
        else None
    reasons = reason_columns(header)
    total = sum(number(r[total_col]) for r in rows)
    lines = [f"ncu source: {path}: {len(rows)} instructions, {total:.0f} samples"]
    if not total:
        lines.append("ncu source: no samples (was the SourceCounters section collected?)")
        return lines
    by_reason = collections.Counter()
    for r in rows:
        for i, name in reasons.items():
            by_reason[name] += number(r[i])
    if by_reason:
        lines.append("stalls: " + ", ".join(f"{k} {v / total:.1%}"
                                            for k, v in by_reason.most_common(10) if v))
    lines.append(f"{'address':>8} {'share':>6}  {'reasons (of the instruction)':<34} source")
    for r in sorted(rows, key=lambda r: -number(r[total_col]))[:top]:
        n = number(r[total_col])
        if not n:
            break
        mine = sorted(((number(r[i]), name) for i, name in reasons.items()), reverse=True)[:2]
        why = ", ".join(f"{name} {v / n:.0%}" for v, name in mine if v)
        addr = r[addr_col] if addr_col is not None else ""
        lines.append(f"{addr:>8} {n / total:6.1%}  {why:<34} {r[src_col].strip()[:70]}")
    ops = collections.Counter()
    for r in rows:
        ops[opcode(r[src_col])] += number(r[total_col])
    lines.append("by opcode: " + ", ".join(f"{k} {v / total:.1%}" for k, v in ops.most_common(8)
                                          if v))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", help="ncu -i REP --page source --csv --print-source sass output")
    ap.add_argument("--top", type=int, default=25, help="instructions listed (default 25)")
    a = ap.parse_args(argv)
    if a.top < 1:
        ap.error(f"--top {a.top}: at least 1")
    try:
        print("\n".join(summary(a.csv, a.top)))
    except (OSError, ValueError) as e:
        print(f"ncu_source: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
