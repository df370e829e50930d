#!/usr/bin/env python3
"""Charts (PNG) of the files s2lora's benches and trainer write.

  --attn FILE     `s2lora bench attn --json` output ({"device", "rows": [...]}),
                  bench/gpu-check.sh's bench_attn.json ({"runs": [one such object a run]}), or
                  `s2lora bench attn --csv` output (the same fields; it names no card):
                  attn.png, TF/s (S² FLOPs) against N on a log2 axis, one line per
                  implementation (and shape, when there are several: head dim, and
                  grouped-query heads "GQA H/Hkv"), a forward and a forward+backward panel.
  --lora FILE     `s2lora bench lora --csv` output (header M,dim,r,base_fwd_ms,lora_fwd_ms,
                  fwd_overhead_pct,base_fb_ms,lora_fb_ms,fb_overhead_pct,failed) or the same
                  fields as JSON (a list of rows, or {"rows": [...]} with an optional "device"):
                  lora.png, the overhead over the base GEMM per shape, grouped bars per rank,
                  forward and forward+backward panels.
  --train FILE    a train.jsonl of `s2lora train` (one JSON object a step: step, tokens_per_s,
                  mem_gib, peak_mem_gib per rank): train.png, tokens/s and device memory against
                  the step, one line per file (a file whose mem_gib is null throughout, its
                  peak_mem_gib alone, draws that peak as a dashed level). LABEL=FILE names the
                  line (default: the file's folder).
Every option but -o may be given more than once. Each chart's title names the card and the
commit where the input says them (a "device" / "commit" key); --card and --commit supply them
where it does not (bench lora's CSV and train.jsonl name neither; no input names its commit).

usage: plot.py [--attn FILE]... [--lora FILE]... [--train [LABEL=]FILE]...
               [--card NAME] [--commit REV] -o OUTDIR

Prints one line per chart written. Exit status: 0 written, 1 an input is not what it should be
(the message names the file, the row or line, and what was expected) or matplotlib is missing,
2 usage.
"""
import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile


class InputError(Exception):
    """An input file that is not what its option reads."""


def number(v, where, key, allow_null=True):
    """A finite or missing (None/NaN) number from a parsed field; anything else is refused."""
    if v is None or v == "":
        if allow_null:
            return math.nan
        raise InputError(f"{where}: '{key}' is empty; expected a number")
    if isinstance(v, bool):
        raise InputError(f"{where}: '{key}' is {v!r}; expected a number")
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where}: '{key}' is {v!r}; expected a number") from None


def integer(v, where, key):
    x = number(v, where, key, allow_null=False)
    if not math.isfinite(x) or x != int(x) or x <= 0:
        raise InputError(f"{where}: '{key}' is {v!r}; expected a positive integer")
    return int(x)


def flag(v, where, key):
    """bench's 'failed': a JSON boolean, or 0/1 (CSV)."""
    if v is None or v == "":
        return False
    if isinstance(v, bool):
        return v
    if str(v) in ("0", "1"):
        return str(v) == "1"
    raise InputError(f"{where}: '{key}' is {v!r}; expected true/false or 0/1")


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not JSON: {e}") from None


def need(obj, key, where):
    if key not in obj:
        raise InputError(f"{where}: no '{key}'")
    return obj[key]


# ------------------------------------------------------------------------------ inputs

def read_text(path):
    """A file's text; an unreadable or non-text file is an InputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not text: {e}") from None


def csv_rows(path, text, fields, required):
    """(where, row) of each data line of a CSV whose header holds the required fields."""
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not set(required) <= set(reader.fieldnames):
        raise InputError(f"{path}: line 1: expected a CSV header with the fields "
                         f"{','.join(fields)}")
    for r in reader:
        where = f"{path}: line {reader.line_num}"
        if None in r or None in r.values():
            raise InputError(f"{where}: {len(reader.fieldnames)} fields expected")
        yield where, r


ATTN_FIELDS = ("impl", "N", "d", "H", "Hkv", "fwd_tflops", "fb_tflops", "failed", "note")


def attn_row(r, where, device, commit):
    impl = need(r, "impl", where)
    if not isinstance(impl, str) or not impl:
        raise InputError(f"{where}: 'impl' is {impl!r}; expected a name")
    return {
        "impl": impl, "N": integer(need(r, "N", where), where, "N"),
        "d": integer(need(r, "d", where), where, "d"),
        "heads": heads_of(r, where),
        "fwd_tflops": number(need(r, "fwd_tflops", where), where, "fwd_tflops"),
        "fb_tflops": number(need(r, "fb_tflops", where), where, "fb_tflops"),
        "failed": flag(r.get("failed"), where, "failed"),
        "device": device, "commit": commit,
        "tile": tile_of(r.get("note")),
    }


def read_attn(path):
    """Rows of a bench attn JSON, each with its run's device, or of its CSV (which names no
    device: --card does): a list of dicts."""
    text = read_text(path)
    if text.lstrip()[:1] not in ("{", "["):
        out = [attn_row(r, where, "", "")
               for where, r in csv_rows(path, text, ATTN_FIELDS, ("impl", "N", "d"))]
        if not out:
            raise InputError(f"{path}: no rows")
        return out
    root = load_json(path)
    if isinstance(root, dict) and "runs" in root:
        runs = root["runs"]
        if not isinstance(runs, list):
            raise InputError(f"{path}: 'runs' is not a list of bench attn objects")
        wheres = [f"{path}: runs[{i}]" for i in range(len(runs))]
    else:
        runs, wheres = [root], [path]
    out = []
    for run, where in zip(runs, wheres):
        if not isinstance(run, dict) or not isinstance(run.get("rows"), list):
            raise InputError(f"{where}: expected an object with a 'rows' list "
                             "(s2lora bench attn --json)")
        device = run.get("device") or ""
        commit = run.get("commit") or ""
        for i, r in enumerate(run["rows"]):
            w = f"{where}: rows[{i}]"
            if not isinstance(r, dict):
                raise InputError(f"{w}: not an object")
            out.append(attn_row(r, w, device, commit))
    if not out:
        raise InputError(f"{path}: no rows")
    return out


LORA_FIELDS = ("M", "dim", "r", "base_fwd_ms", "lora_fwd_ms", "fwd_overhead_pct", "base_fb_ms",
               "lora_fb_ms", "fb_overhead_pct", "failed")


def lora_row(r, where):
    for k in ("M", "dim", "r"):
        need(r, k, where)
    row = {"M": integer(r["M"], where, "M"), "dim": integer(r["dim"], where, "dim"),
           "r": integer(r["r"], where, "r"), "failed": flag(r.get("failed"), where, "failed")}
    for part in ("fwd", "fb"):
        pct = f"{part}_overhead_pct"
        if pct in r:
            row[part] = number(r[pct], where, pct)
        elif f"base_{part}_ms" in r and f"lora_{part}_ms" in r:
            base = number(r[f"base_{part}_ms"], where, f"base_{part}_ms")
            ours = number(r[f"lora_{part}_ms"], where, f"lora_{part}_ms")
            row[part] = 100.0 * (ours - base) / base if base > 0 else math.nan
        else:
            raise InputError(f"{where}: neither '{pct}' nor 'base_{part}_ms' and "
                             f"'lora_{part}_ms'")
    return row


def read_lora(path):
    """Rows of a bench lora CSV or JSON (same field names) and the device it names, if any."""
    text = read_text(path)
    device = commit = ""
    if text.lstrip()[:1] in ("{", "["):
        root = load_json(path)
        rows = root
        if isinstance(root, dict):
            device, commit = root.get("device") or "", root.get("commit") or ""
            rows = root.get("rows")
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a list of rows or an object with a 'rows' list "
                             f"(fields {','.join(LORA_FIELDS)})")
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise InputError(f"{path}: rows[{i}]: not an object")
            out.append(lora_row(r, f"{path}: rows[{i}]"))
    else:
        out = [lora_row(r, where)
               for where, r in csv_rows(path, text, LORA_FIELDS, ("M", "dim", "r"))]
    if not out:
        raise InputError(f"{path}: no rows")
    return out, device, commit


def read_train(spec):
    """(label, steps) of one train.jsonl; steps: dicts of step, tokens_per_s, mem_gib, peak."""
    label, sep, path = spec.partition("=")
    if not sep or not label or os.path.exists(spec):
        label, path = "", spec
    if not label:
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        stem = os.path.splitext(os.path.basename(path))[0]
        label = parent if stem == "train" and parent else stem
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not text: {e}") from None
    steps, device, commit = [], "", ""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not JSON: {e}") from None
        if not isinstance(o, dict):
            raise InputError(f"{where}: not an object")
        peak = o.get("peak_mem_gib")
        peaks = peak if isinstance(peak, list) else [] if peak is None else [peak]
        steps.append({
            "step": integer(need(o, "step", where), where, "step"),
            "tokens_per_s": number(need(o, "tokens_per_s", where), where, "tokens_per_s"),
            "mem_gib": number(need(o, "mem_gib", where), where, "mem_gib"),
            "peak": max([number(p, where, "peak_mem_gib") for p in peaks] or [math.nan]),
        })
        device, commit = o.get("device") or device, o.get("commit") or commit
    if not steps:
        raise InputError(f"{path}: no steps (an empty train.jsonl)")
    return label, steps, device, commit


# ------------------------------------------------------------------------------ charts

def title(what, devices, commits, card, commit):
    devs = sorted({d for d in devices if d}) or ([card] if card else [])
    revs = sorted({c for c in commits if c}) or ([commit] if commit else [])
    tail = ", ".join(devs + [f"commit {', '.join(revs)}"] if revs else devs)
    return f"{what} — {tail}" if tail else what, tail


def n_label(n):
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def save(fig, outdir, name):
    """Writes the figure as outdir/name, atomically (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".png", dir=outdir)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, os.path.join(outdir, name))
    except BaseException:
        os.unlink(tmp)
        raise
    return os.path.join(outdir, name)


def tile_of(note):
    """The tile a bench attn row names in its note ("tile k=v,k=v ..."), as {k: v}; {} if none."""
    if not isinstance(note, str):
        return {}
    m = re.search(r"\btile ([a-z0-9_]+=[0-9]+(?:,[a-z0-9_]+=[0-9]+)*)", note)
    return dict(kv.split("=", 1) for kv in m.group(1).split(",")) if m else {}


def attn_labels(rows):
    """{impl: legend label}: an s2lora row of a --tile comparison (s2lora#1, #2, ...) is
    labelled with the tile keys whose values differ between those rows, so a chart of tiles
    says which is which; every other implementation keeps its name."""
    tiles = {}
    for r in rows:
        if re.fullmatch(r"s2lora#\d+", r["impl"]) and r.get("tile"):
            tiles.setdefault(r["impl"], r["tile"])
    keys = sorted({k for t in tiles.values() for k in t})
    differ = [k for k in keys if len({t.get(k) for t in tiles.values()}) > 1]
    labels = {r["impl"]: r["impl"] for r in rows}
    if len(tiles) > 1 and differ:
        for impl, t in tiles.items():
            labels[impl] = f"{impl}: " + ",".join(f"{k}={t.get(k, '-')}" for k in differ)
    return labels


def heads_of(r, where):
    """"" for a row whose query and key/value heads are as many (or that names neither: older
    bench JSON), else "GQA H/Hkv": grouped-query rows are drawn as a shape of their own."""
    if r.get("H") is None and r.get("Hkv") is None:
        return ""
    H, Hkv = integer(need(r, "H", where), where, "H"), integer(need(r, "Hkv", where), where, "Hkv")
    return "" if H == Hkv else f"GQA {H}/{Hkv}"


def shape_label(shape):
    d, heads = shape
    return f"d={d}, {heads}" if heads else f"d={d}"


def plot_attn(plt, rows, outdir, card, commit):
    # The shapes (head dim, grouped-query heads): the largest head dim without GQA drawn solid.
    ds = sorted({(r["d"], r["heads"]) for r in rows}, key=lambda k: (-k[0], k[1]))
    series = {}
    for r in rows:
        series.setdefault((r["impl"], (r["d"], r["heads"])), []).append(r)
    # One colour an implementation (ours first), one line style and marker a head dim.
    impls = sorted({r["impl"] for r in rows}, key=lambda k: (not k.startswith("s2lora"), k))
    labels = attn_labels(rows)
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    colour = {impl: cycle[i % len(cycle)] for i, impl in enumerate(impls)}
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ns = sorted({r["N"] for r in rows})
    drawn = 0
    for ax, field, what in zip(axes, ("fwd_tflops", "fb_tflops"),
                               ("forward", "forward + backward")):
        for impl, d in sorted(series, key=lambda k: (impls.index(k[0]), ds.index(k[1]))):
            pts = sorted((r["N"], r[field]) for r in series[(impl, d)]
                         if not r["failed"] and math.isfinite(r[field]))
            if not pts:
                continue
            ours = impl.startswith("s2lora")
            k = ds.index(d)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[impl],
                    marker=markers[k % len(markers)], linestyle=styles[k % len(styles)],
                    linewidth=2.4 if ours else 1.4, zorder=3 if ours else 2,
                    label=labels[impl] if len(ds) == 1 else f"{labels[impl]} ({shape_label(d)})")
            drawn += 1
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([n_label(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("sequence length N (log2)")
        ax.set_ylabel("TF/s (S² FLOPs)")
        ax.set_title(what)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if not drawn:
        raise InputError("attn: every row failed or has no TF/s: nothing to plot")
    text, tail = title("S²-Attn and peers, TF/s", [r["device"] for r in rows],
                       [r["commit"] for r in rows], card, commit)
    fig.suptitle(text)
    fig.tight_layout()
    path = save(fig, outdir, "attn.png")
    plt.close(fig)
    return path, tail, len(rows)


def plot_lora(plt, sets, outdir, card, commit):
    """sets: (label, rows); bars per (label, r) in each shape group."""
    shapes = sorted({(r["M"], r["dim"]) for _, rows, _, _ in sets for r in rows})
    # One colour a rank, one hatch a file (e.g. untuned and tuned).
    ranks = sorted({r["r"] for _, rows, _, _ in sets for r in rows})
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    hatches = ["", "//", "..", "xx"]
    series = []
    for k, (label, rows, _, _) in enumerate(sets):
        for rank in sorted({r["r"] for r in rows}):
            name = f"r={rank}" + (f" ({label})" if len(sets) > 1 else "")
            series.append((name, cycle[ranks.index(rank) % len(cycle)],
                           hatches[k % len(hatches)],
                           {(r["M"], r["dim"]): r for r in rows if r["r"] == rank}))
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(shapes) + 5), 5.4))
    width = 0.8 / max(1, len(series))
    for ax, part, what in zip(axes, ("fwd", "fb"), ("forward", "forward + backward")):
        top = 15.0 if part == "fb" else 0.0  # the f+b panel shows the 15 % line
        for i, (name, colour, hatch, by_shape) in enumerate(series):
            xs, ys = [], []
            for j, s in enumerate(shapes):
                r = by_shape.get(s)
                if r is not None and not r["failed"] and math.isfinite(r[part]):
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r[part])
            bars = ax.bar(xs, ys, width, label=name, color=colour, hatch=hatch,
                          edgecolor="white" if hatch else None)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            top = max([top] + ys)
        if part == "fb":
            ax.axhline(15, color="grey", linestyle="--", linewidth=1)
            ax.text(-0.45, 15, "15 %", va="bottom", ha="left", fontsize=8, color="grey")
        low = min([0.0] + [r[part] for *_, by_shape in series for r in by_shape.values()
                           if not r["failed"] and math.isfinite(r[part])])
        ax.set_ylim(1.2 * low, 1.35 * top + 1)  # room above the bars for the legend
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([f"M={m}\n{d}x{d}" for m, d in shapes], fontsize=8)
        ax.set_ylabel("overhead over the frozen base GEMM (%)")
        ax.set_title(what)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=min(4, len(series), 2 * len(shapes)))
    text, tail = title("LoRA linear, overhead per shape", [s[2] for s in sets],
                       [s[3] for s in sets], card, commit)
    fig.suptitle(text)
    fig.tight_layout()
    path = save(fig, outdir, "lora.png")
    plt.close(fig)
    return path, tail, sum(len(rows) for _, rows, _, _ in sets)


def plot_train(plt, runs, outdir, card, commit):
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for label, steps, _, _ in runs:
        xs = [s["step"] for s in steps]
        axes[0].plot(xs, [s["tokens_per_s"] for s in steps], marker=".", label=label)
        peak = max([s["peak"] for s in steps if math.isfinite(s["peak"])] +
                   [s["mem_gib"] for s in steps if math.isfinite(s["mem_gib"])] or [math.nan])
        if any(math.isfinite(s["mem_gib"]) for s in steps):
            axes[1].plot(xs, [s["mem_gib"] for s in steps], marker=".",
                         label=f"{label} (peak {peak:.2f} GiB)")
        elif math.isfinite(peak): # a log with its peak alone: the peak as a dashed level
            axes[1].plot([xs[0], xs[-1]], [peak, peak], linestyle="--",
                         label=f"{label} (peak {peak:.2f} GiB; no per-step record)")
    for ax, ylabel, what in ((axes[0], "tokens/s", "throughput"),
                             (axes[1], "device memory in use (GiB)", "memory")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(what)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    text, tail = title("training: tokens/s and memory", [r[2] for r in runs],
                       [r[3] for r in runs], card, commit)
    fig.suptitle(text)
    fig.tight_layout()
    path = save(fig, outdir, "train.png")
    plt.close(fig)
    return path, tail, sum(len(r[1]) for r in runs)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="PNG charts of bench attn JSON, bench lora CSV/JSON and train.jsonl files.")
    ap.add_argument("--attn", action="append", default=[], metavar="FILE")
    ap.add_argument("--lora", action="append", default=[], metavar="FILE")
    ap.add_argument("--train", action="append", default=[], metavar="[LABEL=]FILE")
    ap.add_argument("--card", default="", help="the card, where an input does not name it")
    ap.add_argument("--commit", default="", help="the commit the inputs were measured at")
    ap.add_argument("-o", "--out", required=True, metavar="OUTDIR")
    a = ap.parse_args(argv)
    if not (a.attn or a.lora or a.train):
        ap.error("nothing to plot: give --attn, --lora or --train")
    try:
        attn = [r for p in a.attn for r in read_attn(p)]
        lora = []
        for p in a.lora:
            label, sep, path = p.partition("=")
            if not sep or not label or os.path.exists(p):
                label, path = os.path.splitext(os.path.basename(p))[0], p
            rows, device, commit = read_lora(path)
            lora.append((label, rows, device, commit))
        train = [read_train(p) for p in a.train]
    except InputError as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 1
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed (Debian: python3-matplotlib)",
              file=sys.stderr)
        return 1
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        print(f"plot.py: {a.out}: cannot create: {e.strerror}", file=sys.stderr)
        return 1
    done = []
    try:
        if attn:
            done.append(plot_attn(plt, attn, a.out, a.card, a.commit))
        if lora:
            done.append(plot_lora(plt, lora, a.out, a.card, a.commit))
        if train:
            done.append(plot_train(plt, train, a.out, a.card, a.commit))
    except InputError as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plot.py: {a.out}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    for path, tail, n in done:
        print(f"plot: wrote {path} ({n} rows{'; ' + tail if tail else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
