"""The three report files of ``android_bench run``.

- ``results.json``: every raw number (each session's runs, init, first
  inference, memory), the device facts, tool versions and file hashes, the
  protocol, and the summaries and ratios derived from them. It is rewritten
  atomically after every round, so it is never half written.
- ``report.md``: the tables (per model; against the baseline) and how the
  numbers were measured; with ``--op-profile``, a section per model with
  its time per op type and per node (``opprofile.format_profile``).
- ``report.png``: latency P50/P90 and memory per model (matplotlib).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METHOD = (
    "Each session is one fresh `benchmark_model` process (`--num_runs=2 --min_secs=0`); "
    "its summary line gives both timed runs exactly (`first`, `curr`), so P50/P90 and "
    "mean/std/min/max are over individual inferences. Init and first inference are medians "
    "over sessions. Peak memory is the largest of the sessions' periodic-monitoring peaks "
    "(the whole process's max RSS); footprint is the median growth of the max RSS from the "
    "tool's start to its end (`Memory footprint delta ... overall=`). Sessions of the models "
    "alternate (A B A B ...)."
)


# How each source of op profiles measures (``OpProfile.source``).
OP_PROFILE_METHOD = {
    "device": (
        "One extra `benchmark_model` session per model after the timed ones, with "
        "`--enable_op_profiling=true`: the runtime's profiler times every node of every profiled run "
        "(delegate nodes as one node each: `GqDelegate` for a GQ op, `TfLiteXNNPackDelegate` for an "
        "XNNPACK partition). Whole graph is the same session's mean run, profiler on."
    ),
    "host": (
        "LiteRT's Python API has no op profiler, so each node of subgraph 0 is timed alone: a one-node "
        "model (the node's constants kept, its other inputs fed the values of a real run of the full model), "
        "invoked in a fresh order each run among the other nodes, the whole model and an empty model; a "
        "node's time is its median invoke minus the empty model's median invoke (the fixed cost of one "
        "`invoke()`), and so is the whole graph's. Nodes a delegate fuses in the full model (XNNPACK "
        "partitions) each pay their own dispatch when alone, so their sum can exceed the whole graph."
    ),
}


def write_json(results: dict, out_dir: Path):
    path = Path(out_dir) / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _ms(us):
    return "-" if us is None else f"{us / 1000:.3f}"


def _mb(v):
    return "-" if v is None else f"{v:.1f}"


def _size(n):
    return f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB"


def _ratio(r):
    return "-" if r is None else f"{r:.2f}x ({(r - 1) * 100:+.1f}%)"


def markdown_table(results: dict) -> str:
    """The per-model table and the table of ratios against the baseline."""
    lines = [
        "| model | GQ ops | size | init ms | first ms | P50 ms | P90 ms | mean ± std ms | min ms | max ms "
        "| peak MB | footprint MB | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results["models"]:
        s = m["summary"]
        name = m["name"] + (" (baseline)" if m["name"] == results["baseline"] else "")
        gq = "yes" if m["uses_delegate"] else "no"
        if s is None:
            lines.append(f"| {name} | {gq} | {_size(m['size_bytes'])} | " + " | ".join(["-"] * 10) + " |")
            continue
        lines.append(
            f"| {name} | {gq} | {_size(m['size_bytes'])} | {_ms(s['init_us'])} | {_ms(s['first_inference_us'])} "
            f"| {_ms(s['p50_us'])} | {_ms(s['p90_us'])} | {_ms(s['mean_us'])} ± {_ms(s['std_us'])} "
            f"| {_ms(s['min_us'])} | {_ms(s['max_us'])} | {_mb(s['peak_memory_mb'])} "
            f"| {_mb(s['footprint_mb'])} | {s['runs']} |"
        )
    compared = [m for m in results["models"] if m.get("vs_baseline")]
    if compared:
        lines += [
            "",
            f"Against the baseline {results['baseline']} (model / baseline; below 1x is smaller or faster):",
            "",
            "| model | size | P50 | P90 | mean | init | peak memory | footprint |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in compared:
            r = m["vs_baseline"]
            lines.append(
                f"| {m['name']} | {_ratio(r['size_bytes'])} | {_ratio(r['p50_us'])} | {_ratio(r['p90_us'])} "
                f"| {_ratio(r['mean_us'])} | {_ratio(r['init_us'])} | {_ratio(r['peak_memory_mb'])} "
                f"| {_ratio(r['footprint_mb'])} |"
            )
    return "\n".join(lines)


def _describe(results: dict) -> list[str]:
    d, p, t = results["device"], results["protocol"], results["tools"]
    if results["target"] == "device":
        where = (f"Device: {d.get('manufacturer', '')} {d.get('model', '')} ({d.get('device', '')}), "
                 f"Android {d.get('android', '?')} (SDK {d.get('sdk', '?')}), ABI {d.get('abi', '?')}, "
                 f"SoC {d.get('soc') or d.get('hardware') or '?'}, serial {d.get('serial')}, {d.get('adb', '')}.")
    else:
        where = f"Host: {d.get('model', '?')} ({d.get('abi', '?')}), {d.get('os', '')}, Python {d.get('python', '')}."
    governors = ", ".join(d.get("governors") or []) or "unknown"
    binary = t.get("benchmark_binary") or {}
    delegate = t.get("delegate")
    lines = [
        where,
        f"CPUs: {d.get('cores', '?')} (governors: {governors}); taskset {p['mask']} = CPUs {p['cpus']} "
        f"({p['mask_reason']}); {p['threads']} thread(s).",
        f"Protocol: {p['sessions_per_model']} sessions x {p['runs_per_session']} timed runs per model, "
        f"warmup {p['warmup_runs']} runs and at least {p['warmup_secs']:g} s per session"
        + (f", extra flags {' '.join(p['extra_args'])}" if p.get("extra_args") else "") + ".",
        f"Benchmark binary: {binary.get('path')}"
        + (f" (sha256 {binary['sha256'][:16]}...)" if binary.get("sha256") else "")
        + (f"; delegate {delegate['path']} (sha256 {delegate['sha256'][:16]}...)" if delegate else "; no delegate")
        + f"; gq-tf {t.get('gq-tf')}, LiteRT {t.get('ai-edge-litert')}.",
        f"Started {results['started']}, finished {results['finished']}; "
        + ("complete." if results["complete"] else f"INCOMPLETE: {results['error']}"),
    ]
    return lines


def markdown(results: dict) -> str:
    body = ["# android_bench report", ""]
    body += [f"- {line}" for line in _describe(results)]
    failed = [m for m in results["models"] if m.get("error")]
    if failed:
        body += ["", "Failures:"] + [f"- {m['name']}: {m['error']}" for m in failed]
    body += ["", markdown_table(results), "", f"How: {METHOD}", "", "![latency and memory](report.png)", ""]
    body += op_profile_sections(results)
    return "\n".join(body)


def op_profile_sections(results: dict) -> list[str]:
    """The report's op-profile part: how it was measured, then one section per model."""
    from android_bench.opprofile import format_profile

    profiled = [m for m in results["models"] if m.get("op_profile")]
    if not profiled:
        return []
    sources = {m["op_profile"].get("source", "") for m in profiled} - {""}
    body = ["## Op profiles", ""]
    for source in sorted(sources):
        how = OP_PROFILE_METHOD["host" if source.startswith("host") else "device"]
        body += [f"How ({source}): {how}", ""]
    for m in profiled:
        p = m["op_profile"]
        body += [f"### {m['name']}", ""]
        if "error" in p:
            body += [f"FAILED: {p['error']}", ""]
            continue
        body += [format_profile(p), "", f"Log: `{p.get('log')}`", ""]
    return body


def plot(results: dict, path: Path):
    """Latency P50/P90 (ms) and memory (MB) per model, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results["models"] if m["summary"]]
    names = [m["name"] for m in models]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names) + 4), 4.2))
    x = range(len(names))
    width = 0.38

    def bars(ax, values, offset, label, color):
        vals = [v if v is not None else 0 for v in values]
        drawn = ax.bar([i + offset for i in x], vals, width, label=label, color=color)
        ax.bar_label(drawn, labels=["-" if v is None else f"{v:.3g}" for v in values], fontsize=8)

    bars(ax_t, [m["summary"]["p50_us"] / 1000 for m in models], -width / 2, "P50", "#4C72B0")
    bars(ax_t, [m["summary"]["p90_us"] / 1000 for m in models], width / 2, "P90", "#DD8452")
    ax_t.set_ylabel("latency per inference (ms)")
    ax_t.set_title("Latency")
    bars(ax_m, [m["summary"]["peak_memory_mb"] for m in models], -width / 2, "peak", "#55A868")
    bars(ax_m, [m["summary"]["footprint_mb"] for m in models], width / 2, "footprint growth", "#8172B3")
    ax_m.set_ylabel("MB")
    ax_m.set_title("Memory")
    for ax in (ax_t, ax_m):
        ax.set_xticks(list(x), names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
        ax.legend(fontsize=8, loc="upper left")
        ax.margins(y=0.15)
    d = results["device"]
    where = d.get("model") if results["target"] == "device" else f"host: {d.get('model')}"
    fig.suptitle(f"{where}, {results['protocol']['threads']} thread(s), CPUs {results['protocol']['cpus']}"
                 + ("" if results["complete"] else " (incomplete)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict, out_dir: Path):
    """results.json, report.md and report.png (models without measurements are left out of the plot)."""
    out_dir = Path(out_dir)
    write_json(results, out_dir)
    (out_dir / "report.md").write_text(markdown(results))
    plot(results, out_dir / "report.png")
