"""lookalike bench-index on 2,000 generated 64-d vectors: exact rows exact, IVF recall rising
with nprobe, filtered rows full and exact where the plan is exact-subset, PQ smaller than Flat,
the SVG plot well-formed with one polyline per method; bad options exit 2 naming the option;
a --plot path that cannot be written is refused before the run, or named with its cause after
it (the results printed first)."""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

BIN = os.environ["LOOKALIKE_BIN"]


def run(*args):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def rows_of(result, prefix):
    return [r for r in result["rows"] if r["method"].startswith(prefix)]


def check_run(result):
    rows = result["rows"]
    methods = {r["method"] for r in rows}
    for exact in ("brute-force loop", "Flat"):
        for r in [r for r in rows if r["method"] == exact]:
            check(r["recall"] == 1.0, f"{exact}: recall {r['recall']} != 1.0")
    ivf = [r for r in rows if r["method"].startswith("IVF") and r["method"].endswith(",Flat")]
    check(ivf, f"no IVF-Flat rows in {sorted(methods)}")
    ivf.sort(key=lambda r: r["nprobe"])
    recalls = [r["recall"] for r in ivf]
    check(all(b >= a - 0.02 for a, b in zip(recalls, recalls[1:])),
          f"IVF recall does not rise with nprobe: {recalls}")
    check(recalls[-1] >= 0.95, f"IVF recall at nprobe={ivf[-1]['nprobe']}: {recalls[-1]} < 0.95")
    check(recalls[0] < recalls[-1], f"IVF recall flat over nprobe: {recalls}")
    for r in rows:
        if r["filtered_recall"] is None:
            continue
        check(r["full_top_k"] is not None, f"{r['method']}: no full_top_k")
        if r["plan"] in ("exact-subset", "scan") or r["method"] == "Flat":
            check(r["full_top_k"], f"{r['method']} {r['params']}: filtered top-10 not full")
            check(r["filtered_recall"] >= 0.95,
                  f"{r['method']} {r['params']} ({r['plan']}): filtered recall "
                  f"{r['filtered_recall']}")
    base = rows_of(result, "filter after exact scan")
    check(len(base) == 1 and base[0]["filtered_recall"] == 1.0, f"baseline row: {base}")
    flat_mem = [r["memory_bytes"] for r in rows if r["method"] == "Flat"][0]
    pq = [r for r in rows if ",PQ" in r["method"]]
    check(pq, "no IVF-PQ rows")
    check(pq[0]["memory_bytes"] < flat_mem,
          f"PQ memory {pq[0]['memory_bytes']} not below Flat {flat_mem}")
    check(any(r["rerank"] > 0 for r in pq), "no re-ranked PQ rows")
    for r in rows:
        if r["single_qps"] is not None:
            check(r["single_qps"] > 0, f"{r['method']}: single QPS {r['single_qps']}")
    return {r["method"] for r in rows if r["recall"] is not None and r["single_qps"]}


def check_svg(path, plotted):
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    check(root.tag == ns + "svg", f"root element {root.tag}")
    lines = root.findall(f".//{ns}polyline")
    check(len(lines) == len(plotted),
          f"{len(lines)} polylines for {len(plotted)} methods: {sorted(plotted)}")
    texts = " ".join(t.text or "" for t in root.iter(ns + "text"))
    for m in plotted:
        check(m in texts, f"legend lacks {m}")


def check_bad_options():
    for args, option in ((["--sizes", "0"], "--sizes"), (["--dim", "0"], "--dim"),
                         (["--index-spec", "NoSuchIndex"], "--index-spec"),
                         (["--threads", "50000"], "--threads"),
                         (["--threads", "100000"], "--threads")):
        proc = run("bench-index", *args, "--queries", "5")
        check(proc.returncode == 2, f"{args}: exit {proc.returncode}, expected 2\n{proc.stderr}")
        check(option in proc.stderr, f"{args}: message does not name {option}: {proc.stderr}")


def check_plot_errors(tmp):
    """--plot: a path that cannot be written is refused before the benchmark (exit 1, naming the
    cause); one that fails after it still gets the results printed, and the cause."""
    quick = ["--sizes", "500", "--dim", "16", "--queries", "5", "--quick", "--single-budget", "0.2"]
    for plot, cause in ((Path(tmp) / "nodir" / "p.svg", "does not exist"), (Path(tmp), "folder")):
        proc = run("bench-index", *quick, "--json", "--plot", plot)
        check(proc.returncode == 1, f"--plot {plot}: exit {proc.returncode}\n{proc.stderr}")
        check(str(plot) in proc.stderr and cause in proc.stderr, f"--plot {plot}: {proc.stderr}")
        check("size 500" not in proc.stderr, f"--plot {plot}: refused only after the run")
    # The folder vanishes while the benchmark runs: the results, then the cause.
    gone = Path(tmp) / "gone"
    gone.mkdir()
    proc = subprocess.Popen([BIN, "bench-index", "--sizes", "4000", "--dim", "32", "--queries",
                             "20", "--single-budget", "0.5", "--json", "--plot", gone / "p.svg"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    gone.rmdir()
    out, err = proc.communicate(timeout=300)
    check(proc.returncode == 1, f"vanished folder: exit {proc.returncode}\n{first}{err}")
    check(json.loads(out)["rows"], "vanished folder: no results printed")
    check("No such file or directory" in err, f"vanished folder: no cause in {err}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "p.svg"
        proc = run("bench-index", "--sizes", "2000", "--dim", "64", "--queries", "50",
                   "--single-budget", "1", "--json", "--plot", svg)
        check(proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout)
        check(result["dim"] == 64 and result["sizes"] == [2000] and result["queries"] == 50,
              f"header: {result['dim']} {result['sizes']} {result['queries']}")
        plotted = check_run(result)
        check_svg(svg, plotted)
        table = run("bench-index", "--sizes", "1000", "--dim", "32", "--queries", "20", "--quick",
                    "--single-budget", "0.5", "-q")
        check(table.returncode == 0 and "recall" in table.stdout and "Flat" in table.stdout,
              f"table run: exit {table.returncode}\n{table.stdout}\n{table.stderr}")
        check_plot_errors(tmp)
    check_bad_options()
    print("bench-index: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
