#!/usr/bin/env python3
"""scripts/gpu/report.py — reads what a GPU check run left in its raw folder
(gtest JSON and logs, compute-sanitizer logs, the benchmark's and
sdpa_compare's JSON, the load generator's output, the step timings) and
writes gpu-check.json, then prints the compact table the run ends with.

Its own file so that the parsing is tested without a GPU:
`report.py --self-test` builds canned inputs and checks the result
(scripts/gpu-check --self-test runs it from ctest).

Exit code (the run's): 0 everything that ran on the GPU passed; 1 a check
failed (a test, a sanitizer error, a step that timed out or broke, the
benchmark or the service); 3 nothing was checked on a GPU (no device, or
the cuda backend is unavailable in this build).
"""

import argparse
import glob
import json
import os
import re
import sys
import tempfile

NO_DEVICE = "no device"


def read(path, default=""):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def steps(raw):
    """name -> {"rc", "seconds", "limit"} from steps.tsv."""
    out = {}
    for line in read(os.path.join(raw, "steps.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out[parts[0]] = {"rc": int(parts[1]), "seconds": int(parts[2]),
                             "limit": int(parts[3]) if len(parts) > 3 else None}
    return out


def device(raw):
    """(device line, cuda backend line) from `scatterbrain_cli info`."""
    info = read(os.path.join(raw, "info.log"))
    devices, backend = [], None
    in_cuda = False
    for line in info.splitlines():
        if line.startswith("cuda:"):
            in_cuda = True
            continue
        if in_cuda and line.startswith("  "):
            devices.append(line.strip())
        m = re.match(r"\s+cuda: (.*)", line)
        if m:
            backend = m.group(1)
    smi = read(os.path.join(raw, "nvidia-smi.log")).strip().splitlines()
    name = devices[0] if devices else None
    if name is None and smi and "," in smi[0]:
        name = smi[0].strip() + " (nvidia-smi; the CUDA runtime sees none)"
    return name or NO_DEVICE, backend or "unknown"


def tests(raw, step_info):
    """Counts over every cuda_*_test JSON, the largest GPU-vs-CPU
    difference the tests recorded, and why tests were skipped."""
    total = {"passed": 0, "failed": 0, "skipped": 0}
    binaries, max_rel, skip_reason, failures = {}, None, None, []
    for log in sorted(glob.glob(os.path.join(raw, "test_*.log"))):
        name = os.path.basename(log)[len("test_"):-len(".log")]
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        data = read_json(os.path.join(raw, "test_%s.json" % name))
        rc = step_info.get("test_" + name, {}).get("rc")
        for suite in (data or {}).get("testsuites", []):
            for case in suite.get("testsuite", []):
                if case.get("result") == "SUPPRESSED":
                    continue
                if case.get("failures"):
                    counts["failed"] += 1
                    failures.append("%s.%s" % (suite.get("name"),
                                               case.get("name")))
                elif case.get("result") == "SKIPPED":
                    counts["skipped"] += 1
                else:
                    counts["passed"] += 1
                v = case.get("max_rel_err_vs_cpu")
                if v is not None:
                    try:
                        max_rel = max(max_rel or 0.0, float(v))
                    except ValueError:
                        pass
        if data is None or (rc not in (0, None) and counts["failed"] == 0):
            # Crashed, timed out, or failed outside any test.
            counts["failed"] += 1
            failures.append("%s (exit %s, %s)" % (
                name, rc, "no JSON" if data is None else "no failing test"))
        if skip_reason is None:
            lines = read(log).splitlines()
            for i, line in enumerate(lines):
                if line.endswith("Skipped") and i + 1 < len(lines):
                    skip_reason = lines[i + 1].strip()
                    break
        binaries[name] = dict(counts, rc=rc)
        for k in total:
            total[k] += counts[k]
    total["binaries"] = binaries
    total["failures"] = failures[:20]
    total["skip_reason"] = skip_reason
    return total, max_rel


def sanitizer(raw, step_info):
    """Errors per sanitizer run; None where the tool did not run."""
    source = read(os.path.join(raw, "sanitizer.txt")).strip() or "missing"
    runs, total = {}, None
    for log in sorted(glob.glob(os.path.join(raw, "san_*.log"))):
        name = os.path.basename(log)[len("san_"):-len(".log")]
        text = read(log)
        counts = [int(m) for m in re.findall(
            r"ERROR SUMMARY: (\d+) error", text)]
        counts += [int(m) for m in re.findall(
            r"RACECHECK SUMMARY: .*?\((\d+) error", text)]
        rc = step_info.get("san_" + name, {}).get("rc")
        if counts:
            runs[name] = {"errors": sum(counts), "rc": rc}
            total = (total or 0) + sum(counts)
        else:
            last = [l for l in text.splitlines() if l.strip()][-1:] or [""]
            runs[name] = {"errors": None, "rc": rc,
                          "note": "no summary: " + last[0].strip()[:200]}
    return total, {"tool": source, "runs": runs}


def bench(raw):
    data = read_json(os.path.join(raw, "bench.json")) or {}
    rows = []
    for r in data.get("results", []):
        rows.append({k: r.get(k) for k in (
            "N", "method", "precision", "ms", "peak_bytes", "min_ms",
            "repeats", "workspace_bytes", "speedup_vs_exact", "err_est",
            "status")})
    return rows, data.get("error")


def sdpa(raw):
    data = read_json(os.path.join(raw, "sdpa.json")) or {}
    rows = [{k: r.get(k) for k in ("N", "precision", "ms", "peak_bytes",
                                   "min_ms", "repeats", "status")}
            for r in data.get("results", [])]
    return rows, data.get("error"), data.get("torch")


def service(raw):
    text = read(os.path.join(raw, "service.log"))
    out = {"requests_per_s": None, "p50_ms": None, "p99_ms": None,
           "ok": None, "failed": None,
           "status": read(os.path.join(raw, "service_status.txt")).strip()
           or "not run"}
    m = re.search(r"throughput: ([\d.]+) requests/s", text)
    if m:
        out["requests_per_s"] = float(m.group(1))
    m = re.search(r"latency: p50=([\d.]+) ms .*?p99=([\d.]+) ms", text)
    if m:
        out["p50_ms"], out["p99_ms"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"completed: (\d+) ok, (\d+) failed", text)
    if m:
        out["ok"], out["failed"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"batch sizes: .*\(mean ([\d.]+)\)", text)
    if m:
        out["mean_batch"] = float(m.group(1))
    mem = read(os.path.join(raw, "service_metrics.txt")).split()
    if mem:
        try:
            out["device_memory_used_bytes"] = int(float(mem[0]))
        except ValueError:
            pass
    return out


def build(raw):
    step_info = steps(raw)
    dev, backend = device(raw)
    t, max_rel = tests(raw, step_info)
    san_errors, san = sanitizer(raw, step_info)
    bench_rows, bench_error = bench(raw)
    sdpa_rows, sdpa_error, torch_version = sdpa(raw)
    svc = service(raw)
    timed_out = sorted(n for n, s in step_info.items() if s["rc"] in (124, 137))
    stand_in = read(os.path.join(raw, "stand_in.txt")).strip()
    if stand_in:  # a dry run on the CPU backend: judged as a GPU run would
        dev = "%s stand-in (dry run; no GPU checked)" % stand_in
    gpu_checked = stand_in or (dev != NO_DEVICE and backend == "available")
    problems = []
    if t["failed"]:
        problems.append("%d test(s) failed" % t["failed"])
    if san_errors:
        problems.append("%d sanitizer error(s)" % san_errors)
    if timed_out:
        problems.append("timed out: " + ", ".join(timed_out))
    if gpu_checked:
        if bench_error or any(r["status"] and r["status"].startswith("error")
                              for r in bench_rows):
            problems.append("benchmark errors")
        if svc["status"] != "ok" or not svc["ok"] or svc["failed"]:
            problems.append("service: " + svc["status"])
        if t["passed"] == 0:
            problems.append("no GPU test ran")
    if problems:
        code, verdict = 1, "FAIL: " + "; ".join(problems)
    elif stand_in:
        code, verdict = 3, "DRY RUN OK: the pipeline on the %s backend" % stand_in
    elif not gpu_checked:
        code = 3
        verdict = ("NOT CHECKED: no device" if dev == NO_DEVICE else
                   "NOT CHECKED: cuda backend " + backend)
    else:
        code, verdict = 0, "PASS"
    return {
        "device": dev,
        "cuda_backend": backend,
        "tests": t,
        "max_rel_err_vs_cpu": max_rel,
        "sanitizer_errors": san_errors,
        "sanitizer": san,
        "bench": bench_rows,
        "bench_error": bench_error,
        "sdpa": sdpa_rows,
        "sdpa_error": sdpa_error,
        "torch": torch_version,
        "service": svc,
        "libs": read(os.path.join(raw, "libs.txt")).strip(),
        "steps": [dict(name=n, **s) for n, s in step_info.items()],
        "verdict": verdict,
        "exit_code": code,
    }


def fmt_ms(x):
    return "-" if x is None else ("%.3g" % x if x < 1000 else "%.0f" % x)


def table(r):
    """The compact summary printed last."""
    t = r["tests"]
    san = r["sanitizer"]
    runs = ", ".join("%s %s" % (n, "-" if v["errors"] is None else v["errors"])
                     for n, v in san["runs"].items())
    svc = r["service"]
    lines = [
        "",
        "GPU check summary",
        "| item | result |",
        "|---|---|",
        "| device | %s |" % r["device"],
        "| cuda backend | %s |" % r["cuda_backend"],
        "| tests | %d passed, %d failed, %d skipped%s |" % (
            t["passed"], t["failed"], t["skipped"],
            " (%s)" % t["skip_reason"] if t["skipped"] and t["skip_reason"]
            else ""),
        "| max rel err vs cpu | %s |" % (
            "-" if r["max_rel_err_vs_cpu"] is None
            else "%.3g" % r["max_rel_err_vs_cpu"]),
        "| sanitizer | %s |" % (
            "%s errors (%s; %s)" % (
                "-" if r["sanitizer_errors"] is None else r["sanitizer_errors"],
                runs, san["tool"]) if runs else "not run (%s)" % san["tool"]),
        "| service | %s req/s, p50 %s ms, p99 %s ms (%s) |" % (
            fmt_ms(svc["requests_per_s"]), fmt_ms(svc["p50_ms"]),
            fmt_ms(svc["p99_ms"]), svc["status"]),
        "| libs | %s |" % (r["libs"].replace("\n", "; ") or "-"),
    ]
    steps_line = ", ".join("%s %ss%s" % (s["name"], s["seconds"],
                                         "" if s["rc"] == 0 else
                                         " rc=%d" % s["rc"])
                           for s in r["steps"])
    lines.append("| steps | %s |" % (steps_line or "-"))
    methods = ["exact", "scatterbrain", "performer", "lsh"]
    keys = sorted({(b["N"], b["precision"]) for b in r["bench"]} |
                  {(s["N"], s["precision"]) for s in r["sdpa"]})
    if keys:
        lines += ["", "median ms per call (peak workspace MiB)",
                  "| N | precision | " + " | ".join(methods) +
                  " | torch sdpa |",
                  "|---|---|" + "---|" * (len(methods) + 1)]
        for n, prec in keys:
            cells = []
            for m in methods:
                row = next((b for b in r["bench"] if b["N"] == n and
                            b["precision"] == prec and b["method"] == m), None)
                if row is None:
                    cells.append("")
                elif row["ms"] is None:
                    cells.append((row["status"] or "-")[:24])
                else:
                    cells.append("%.3f (%.0f)" % (
                        row["ms"], (row["peak_bytes"] or 0) / 1048576.0))
            s = next((x for x in r["sdpa"] if x["N"] == n and
                      x["precision"] == prec), None)
            cells.append("" if s is None else (
                (s["status"] or "-")[:24] if s["ms"] is None else
                "%.3f (%.0f)" % (s["ms"], (s["peak_bytes"] or 0) / 1048576.0)))
            lines.append("| %d | %s | %s |" % (n, prec, " | ".join(cells)))
    notes = [x for x in (r["bench_error"] and "bench: " + r["bench_error"],
                         r["sdpa_error"] and "sdpa: " + r["sdpa_error"]) if x]
    if notes:
        lines += [""] + notes
    lines += ["", "verdict: %s (exit %d)" % (r["verdict"], r["exit_code"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Self-test on canned inputs.
# ---------------------------------------------------------------------------

def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def self_test():
    raw = tempfile.mkdtemp(prefix="gpu-report-test.")
    write(os.path.join(raw, "info.log"),
          "scatterbrain 0.1.0\nbackends: cpu, cuda\n  cpu: available\n"
          "  cuda: available\ncuda: CUDA 13.0 runtime compiled in, 1 "
          "device(s)\n  NVIDIA H200, sm_90, 140 GiB\n")
    write(os.path.join(raw, "steps.tsv"),
          "test_cuda_backend_test\t1\t50\t90\ntest_cuda_calls_test\t0\t9\t40\n"
          "san_memcheck_backend\t0\t20\t30\nbench\t0\t40\t70\n")
    gtest = {"testsuites": [{"name": "CudaBackendTest", "testsuite": [
        {"name": "A", "result": "COMPLETED", "max_rel_err_vs_cpu": "3e-07"},
        {"name": "B", "result": "COMPLETED",
         "failures": [{"failure": "x", "type": ""}]},
        {"name": "C", "result": "SKIPPED"},
        {"name": "D", "result": "SUPPRESSED"}]}]}
    write(os.path.join(raw, "test_cuda_backend_test.json"), json.dumps(gtest))
    write(os.path.join(raw, "test_cuda_backend_test.log"),
          "tests/x.cc:1: Skipped\nno GPU: none here\n")
    write(os.path.join(raw, "test_cuda_calls_test.json"), json.dumps(
        {"testsuites": [{"name": "S", "testsuite": [
            {"name": "E", "result": "COMPLETED",
             "max_rel_err_vs_cpu": "2e-05"}]}]}))
    write(os.path.join(raw, "test_cuda_calls_test.log"), "")
    write(os.path.join(raw, "test_cuda_service_test.log"), "crashed\n")
    write(os.path.join(raw, "sanitizer.txt"), "/usr/bin/cs (host)")
    write(os.path.join(raw, "san_memcheck_backend.log"),
          "========= ERROR SUMMARY: 2 errors\n")
    write(os.path.join(raw, "san_racecheck_backend.log"),
          "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 "
          "warnings)\n")
    write(os.path.join(raw, "san_memcheck_calls.log"),
          "========= Error: Device not supported\n")
    write(os.path.join(raw, "bench.json"), json.dumps({"results": [
        {"N": 1024, "method": "exact", "precision": "float32", "ms": 1.5,
         "peak_bytes": 1048576, "status": "ok"},
        {"N": 1024, "method": "lsh", "precision": "float32", "ms": None,
         "peak_bytes": 0, "status": "skipped: time budget"}]}))
    write(os.path.join(raw, "sdpa.json"), json.dumps(
        {"torch": "2.11", "error": None, "results": [
            {"N": 1024, "precision": "float32", "ms": 0.5,
             "peak_bytes": 2097152, "status": "ok"}]}))
    write(os.path.join(raw, "service.log"),
          "completed: 200 ok, 0 failed in 4.210 s\nthroughput: 47.51 "
          "requests/s, 298.89 MB/s sent\nlatency: p50=164.18 ms p90=173.68 "
          "ms p99=207.14 ms (min 1, mean 2, max 3 ms)\nbatch sizes: 1 x1, "
          "7 x189 (mean 6.88)\n")
    write(os.path.join(raw, "service_status.txt"), "ok")
    r = build(raw)
    json.dumps(r)  # serialisable
    checks = [
        (r["device"], "NVIDIA H200, sm_90, 140 GiB"),
        (r["cuda_backend"], "available"),
        ((r["tests"]["passed"], r["tests"]["failed"], r["tests"]["skipped"]),
         (2, 2, 1)),  # service: crashed without JSON counts as a failure
        (r["tests"]["skip_reason"], "no GPU: none here"),
        (r["max_rel_err_vs_cpu"], 2e-05),
        (r["sanitizer_errors"], 3),
        (r["sanitizer"]["runs"]["memcheck_calls"]["errors"], None),
        (r["bench"][0]["ms"], 1.5),
        (r["sdpa"][0]["peak_bytes"], 2097152),
        ((r["service"]["requests_per_s"], r["service"]["p50_ms"],
          r["service"]["p99_ms"], r["service"]["mean_batch"]),
         (47.51, 164.18, 207.14, 6.88)),
        (r["exit_code"], 1),
    ]
    bad = [(got, want) for got, want in checks if got != want]
    text = table(r)
    for needle in ("| tests | 2 passed, 2 failed, 1 skipped", "1.500 (1)",
                   "0.500 (2)", "verdict: FAIL"):
        if needle not in text:
            bad.append((needle, "missing from the table"))
    # No device at all: exit 3, nothing else required.
    empty = tempfile.mkdtemp(prefix="gpu-report-test.")
    write(os.path.join(empty, "info.log"),
          "cuda: CUDA 13.0 runtime compiled in, no device: no CUDA-capable "
          "device is detected\n")
    e = build(empty)
    if (e["device"], e["exit_code"]) != (NO_DEVICE, 3):
        bad.append(((e["device"], e["exit_code"]), (NO_DEVICE, 3)))
    if bad:
        for got, want in bad:
            print("report self-test: got %r, want %r" % (got, want))
        return 1
    print("report self-test: ok")
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", help="the run's raw folder")
    ap.add_argument("--out", help="write gpu-check.json here")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.raw or not args.out:
        ap.error("--raw and --out are required")
    r = build(args.raw)
    with open(args.out, "w") as f:
        json.dump(r, f, indent=1)
    print(table(r))
    return r["exit_code"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
