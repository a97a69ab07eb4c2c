"""Benchmark outputs: ``NAME.json`` (everything), ``NAME.md`` (tables), ``NAME_*.png`` (matplotlib plots)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ditas_trt.artifacts import atomic_path, write_bytes_atomic, write_json_atomic


def _fmt(value, spec=".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def variant_rows(result) -> list[str]:
    lines = ["| variant | batch | images/s | step p50 / p90 (ms) | loop p50 / p90 (ms) | ms per image | "
             "peak mem (MB) | weights (MB) | how it ran |", "|---|---|---|---|---|---|---|---|---|"]
    for v in result.variants:
        if v["status"] != "ok":
            lines.append(f"| {v['label']} | — | n/a | | | | | | {v['reason']} |")
            continue
        first = True
        for batch, r in v["batches"].items():
            head = f"| {v['label']} " if first else "| "
            if "images_per_s" not in r:
                lines.append(f"{head}| {batch} | n/a | | | | | | {r.get('error') or r.get('skipped')} |")
                first = False
                continue
            s, loop = r["step_ms"], r["loop_ms"]
            tail = (f"{v['peak_memory_mb']:.0f} (+{v['memory_increase_mb']:.0f}) | {v['weights_mb']:.2f} | {v['path']} |"
                    if first else " | | |")
            lines.append(f"{head}| {batch} | {r['images_per_s']:.2f} | {s['p50']:.2f} / {s['p90']:.2f} | "
                         f"{loop['p50']:.1f} / {loop['p90']:.1f} | {r['ms_per_image']:.2f} | {tail}")
            first = False
    return lines


def bare_images_per_s(result, variant: str, batch: int):
    for v in result.variants:
        if v["name"] == variant and v["status"] == "ok":
            r = v["batches"].get(batch) or v["batches"].get(str(batch)) or {}
            return r.get("images_per_s")
    return None


def triton_rows(result) -> list[str]:
    t = result.triton
    bare_variant = "quantized" if "quantized" in t.get("server", "") else "fp32"
    # 'bare' is only the same work when this run started the server (known backend) with the sweep's step count
    comparable = "server" in t and t["steps"] == result.config["steps"]
    lines = [f"Server: {t.get('server', t.get('url'))}; {t['protocol']}, {t['steps']} steps, "
             f"{t['requests_per_client']} requests per client, one image per request. 'bare' = the same backend's "
             "sampling loop in-process at batch = concurrency (Triton overhead target: <= 10%)"
             + ("." if comparable else "; not comparable here (a server given by URL, or --triton-steps differs "
                                       "from --steps)."), "",
             "| concurrency | images/s | latency p50 / p90 / p99 (ms) | failed | denoiser mean batch (rows) | "
             "denoiser batch sizes | bare images/s | Triton / bare |", "|---|---|---|---|---|---|---|---|"]
    for level in t.get("levels", []):
        c = level["concurrency"]
        lat = level["latency_ms"]
        den = level["server"]["denoiser"]
        bare = bare_images_per_s(result, bare_variant, c) if comparable else None
        ratio = f"{level['images_per_s'] / bare:.2f}" if bare else "—"
        sizes = ", ".join(f"{b}×{n}" for b, n in sorted(den["batch_stats"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| {c} | {level['images_per_s']:.2f} | {lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f} | "
                     f"{level['failed']} | {den['mean_batch']:.1f} | {sizes} | {_fmt(bare)} | {ratio} |")
    return lines


def markdown(result, plots: list[str]) -> str:
    cfg, dev, model = result.config, result.device, result.model
    lines = [f"# ditas-trt bench: {model['label']} on {dev['name']}", "",
             f"- device: {dev['name']}" + (f", compute capability {dev['compute_capability']}, CUDA {dev['cuda']}"
                                           if dev["type"] == "cuda" else "")
             + f"; torch {dev['torch']}, {dev['torch_threads']} torch threads",
             f"- model: {model['label']}, {model['parameters'] / 1e6:.2f} M parameters, config "
             f"`{json.dumps(model['config'], sort_keys=True)}`",
             f"- sampling: {cfg['steps']} {cfg['sampler']} steps, CFG {cfg['cfg_scale']} (forward batch = 2 × images)",
             f"- timing: {'CUDA events (device time)' if dev['type'] == 'cuda' else 'time.perf_counter (host)'}; "
             f"step = one guided forward ({cfg['warmup']} warm-up, {cfg['reps']} timed); loop = the whole sampling "
             f"loop ({cfg['loop_warmup']} warm-up, {cfg['loop_reps']} timed); images/s = batch / p50 loop time",
             "- memory: " + ("CUDA allocator peak (engines: + the plan and TensorRT's activation memory)"
                             if dev["type"] == "cuda" else
                             "peak RSS of the benchmark process (in brackets: increase during this variant)"),
             f"- total time {result.seconds:.0f} s"]
    load = dev.get("load_average") or {}
    if load.get("start"):
        lines.append(f"- machine load average (1/5/15 min) at start {load['start']}, at end {load['end']} "
                     f"({dev['cpu_cores']} cores): other processes share this machine, so CPU numbers are noisy")
    lines += ["", "## Variants", ""]
    lines += variant_rows(result)
    notes = [(v["label"], n) for v in result.variants for n in v.get("notes", [])]
    if notes:
        lines += [""] + [f"- {label}: {note}" for label, note in notes]
    if result.triton:
        lines += ["", "## Triton (tritonclient load generator)", ""] + triton_rows(result)
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def plots(result, out: Path, name: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = [v for v in result.variants if v["status"] == "ok"]

    def series(v, key):
        xs, ys = [], []
        for batch, r in v["batches"].items():
            if key in r:
                xs.append(int(batch))
                ys.append(r[key] if key == "images_per_s" else r[key]["p50"])
        return xs, ys

    for key, ylabel, stem in (("images_per_s", "images / s", "images_per_s"),
                              ("step_ms", "step latency p50 (ms)", "step_latency")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for v in ok:
            xs, ys = series(v, key)
            if xs:
                ax.plot(xs, ys, marker="o", label=v["label"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (images)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{result.model['label']} — {result.device['name']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ok:
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / f"{name}_{stem}.png"))
        plt.close(fig)
    if result.triton and result.triton.get("levels"):
        levels = result.triton["levels"]
        fig, ax1 = plt.subplots(figsize=(7, 4.2))
        cs = [lv["concurrency"] for lv in levels]
        ax1.plot(cs, [lv["images_per_s"] for lv in levels], marker="o", color="C0", label="images/s")
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("concurrent clients")
        ax1.set_ylabel("images / s", color="C0")
        ax2 = ax1.twinx()
        ax2.plot(cs, [lv["latency_ms"]["p50"] for lv in levels], marker="s", color="C1", label="p50 latency")
        ax2.plot(cs, [lv["latency_ms"]["p90"] for lv in levels], marker="^", color="C2", label="p90 latency")
        ax2.set_ylabel("latency (ms)")
        ax2.legend(fontsize=7, loc="upper left")
        ax1.set_title(f"Triton — {result.model['label']} — {result.device['name']}", fontsize=9)
        ax1.grid(True, alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / f"{name}_triton.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return str(path)


def write_outputs(result, out: Path, name: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(result, out, name)
    data = asdict(result)
    write_json_atomic(out / f"{name}.json", data)
    write_bytes_atomic(out / f"{name}.md", markdown(result, pngs).encode())
    return {"json": str(out / f"{name}.json"), "markdown": str(out / f"{name}.md"), "plots": pngs}
