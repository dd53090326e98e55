"""Peak memory of `vitquant eval` on image folders of growing size, and the loader's throughput.

Issue 11, point 3. Two measurements on synthetic folders of varied-size photo-like JPEGs
(``synthetic_photos.make_folder``: sides 160..399 px, 10 classes, test/ only), read at 224 px:

1. Memory. ``vitquant eval MODEL --data FOLDER --random-weights --val 0 --calib 0`` runs as a
   subprocess on a folder of 1,000 and of 10,000 images. Every ~50 ms the whole process tree
   (eval and its DataLoader workers) is sampled with psutil, and the peak of the summed RSS and
   of the summed PSS is kept. PSS is the verdict's metric where the kernel gives it: forked
   workers share the parent's pages, which a sum of RSS counts once per process. Images are
   decoded per batch, so the peak must not grow with N: ``rss_flat`` is peak(10k) <= 1.10 x
   peak(1k). The model is a cheap one (``timm:mobilenetv3_small_050``, 224 px) because the
   loader, not the model, is measured.
2. Throughput, in this process under ``torch.no_grad()``: DeiT-S (random weights, 10 classes)
   fed by ``bundle.batches("test", spec, batch_size=B)`` (decode + timm's transform in
   DataLoader workers) against the same DeiT-S on the same images decoded and transformed once
   beforehand into one tensor, sliced into batches. The two alternate (A, B, A, B, ...);
   ``loader_not_bottleneck`` is median(loader) / median(pre-decoded) >= 0.90.

Image folders have no disk cache (every batch is decoded from the files); the JSON says so.

    python benchmarks/loader_memory.py                  # 1,000 vs 10,000 images; 256 for speed
    python benchmarks/loader_memory.py --quick          # 100 vs 300 images; 32 for speed

Writes runs/bench/loader_memory.json (or --out) atomically and prints a markdown table. Exits 0
whatever the verdicts (pass --check to exit 1 when one fails).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # synthetic_photos
sys.path.insert(0, str(HERE.parent / "src"))

from synthetic_photos import make_folder  # noqa: E402

from vitquant.io import write_json  # noqa: E402

MB = 2**20
CLASSES = 10
MEMORY_TOLERANCE = 1.10  # peak(largest N) <= 1.10 x peak(smallest N)
THROUGHPUT_TARGET = 0.90  # loader images/s >= 0.90 x pre-decoded images/s
DISK_CACHE_LIMIT_GIB = 2.0  # the issue's ceiling for a default disk cache, had there been one
TRACE_POINTS = 40


def machine_info() -> dict:
    import torch

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "psutil": psutil.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_total_mb": psutil.virtual_memory().total / MB,
    }


def photo_folder(root: Path, n: int) -> Path:
    """``root/photos-n/test/class_k/*.jpg``: ``n`` images in 10 classes, written once."""
    folder = root / f"photos-{n}"
    make_folder(folder, per_class=n // CLASSES, classes=CLASSES, split="test", seed=0)
    return folder


# --- 1. memory of the eval process tree -----------------------------------------------------


def tree_memory(proc: psutil.Process, *, full: bool) -> tuple[int, int | None, int]:
    """Summed RSS and (with ``full``) PSS, in bytes, of ``proc`` and its descendants; their count.

    RSS comes from /proc/PID/statm (microseconds). PSS needs /proc/PID/smaps_rollup, which the
    kernel builds by walking the page tables: about 9 ms of CPU per 1 GB process, so it is read
    less often. PSS is None when not asked for or when a process of the tree does not give it.
    """
    rss, pss, count = 0, 0 if full else None, 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, None, 0
    for p in members:
        try:
            info = p.memory_full_info() if full else p.memory_info()
        except psutil.AccessDenied:
            try:
                info, pss = p.memory_info(), None
            except psutil.Error:
                continue
        except psutil.Error:  # exited between the listing and the read
            continue
        if info.rss == 0:  # a zombie: exited, not yet reaped
            continue
        count += 1
        rss += info.rss
        pss = pss + info.pss if pss is not None else None
    return rss, pss, count


def _downsample(trace: list[list[float]], points: int) -> list[list[float]]:
    if len(trace) <= points:
        return trace
    step = (len(trace) - 1) / (points - 1)
    return [trace[round(k * step)] for k in range(points)]


def run_eval(
    model: str, folder: Path, n: int, *, out: Path, interval: float, pss_interval: float
) -> dict:
    """Run ``vitquant eval`` on ``folder`` and sample its process tree until it exits."""
    cmd = [sys.executable, "-m", "vitquant", "eval", model, "--data", str(folder)]
    cmd += ["--random-weights", "--val", "0", "--calib", "0", "--out", str(out), "--overwrite"]
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    log = out.parent / f"eval-{n}.log"
    pss_every = max(1, round(pss_interval / interval))
    cpu0 = time.process_time()
    start = time.perf_counter()
    with open(log, "wb") as sink:
        popen = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    proc = psutil.Process(popen.pid)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    pss_ok, pss_samples, tick = True, 0, 0
    trace: list[list] = []
    while True:
        # wait4 gives this child's rusage: ru_maxrss is the high-water RSS of the largest single
        # process of the tree, a cross-check on the sampled per-process figures.
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid != 0:
            break
        t = time.perf_counter() - start
        full = tick % pss_every == 0
        tick += 1
        rss, pss, count = tree_memory(proc, full=full)
        if count:
            peak["rss"] = max(peak["rss"], rss)
            peak["processes"] = max(peak["processes"], count)
            if full:
                pss_ok = pss_ok and pss is not None
                peak["pss"] = max(peak["pss"], pss or 0)
                pss_samples += 1
            mb = None if pss is None else round(pss / MB, 1)
            trace.append([round(t, 3), round(rss / MB, 1), mb, count])
        time.sleep(max(0.0, interval - (time.perf_counter() - start - t)))
    seconds = time.perf_counter() - start
    popen.returncode = os.waitstatus_to_exitcode(status)  # reaped above by wait4
    if popen.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"vitquant eval on {folder} failed ({popen.returncode}):\n{tail}")
    result = json.loads((out / "eval.json").read_text())
    pss_ok = pss_ok and pss_samples > 0
    col = 2 if pss_ok else 1
    peak_at = max((r for r in trace if r[col] is not None), key=lambda r: r[col])[0]
    pss_trace = [r for r in trace if r[2] is not None] if pss_ok else trace
    # The peak is the max of a plateau that wobbles batch to batch (a longer run draws more
    # samples from it); the median while workers run is the plateau's level.
    loading = [r[col] for r in pss_trace if r[3] > 1]
    return {
        "images": n,
        "folder": str(folder),
        "command": cmd[2:],
        "seconds": seconds,
        "images_per_s": result["n"] / seconds,
        "n_evaluated": result["n"],
        "accuracy": result["accuracy"],
        "eval_threads": result.get("latency_threads"),
        "peak_rss_sum_mb": peak["rss"] / MB,
        "peak_pss_sum_mb": peak["pss"] / MB if pss_ok else None,
        "peak_at_s": peak_at,
        "median_with_workers_mb": statistics.median(loading) if loading else None,
        "median_with_workers_metric": "pss_sum" if pss_ok else "rss_sum",
        "peak_processes": peak["processes"],
        "max_single_process_rss_mb": usage.ru_maxrss / 1024.0,  # KiB on Linux
        "samples": len(trace),
        "pss_samples": pss_samples,
        "sample_interval_s": interval,
        "pss_sample_interval_s": interval * pss_every,
        "sampler_cpu_s": time.process_time() - cpu0,
        "trace_columns": ["t_s", "rss_sum_mb", "pss_sum_mb", "processes"],
        "trace": _downsample(pss_trace, TRACE_POINTS),
    }


def memory_verdict(runs: list[dict]) -> dict:
    """Peak of the largest N over the smallest, on PSS sums where every run has them."""
    small = min(runs, key=lambda r: r["images"])
    large = max(runs, key=lambda r: r["images"])
    metric = "pss_sum" if all(r["peak_pss_sum_mb"] is not None for r in runs) else "rss_sum"
    ratios = {"rss_sum": large["peak_rss_sum_mb"] / small["peak_rss_sum_mb"]}
    if metric == "pss_sum":
        ratios["pss_sum"] = large["peak_pss_sum_mb"] / small["peak_pss_sum_mb"]
    # Eval's own rate counts start-up, model build and its latency timing; the marginal rate
    # between the two sizes cancels those fixed costs.
    medians = [r["median_with_workers_mb"] for r in (small, large)]
    extra_s = large["seconds"] - small["seconds"]
    marginal = (large["images"] - small["images"]) / extra_s if extra_s > 0 else None
    return {
        "metric": metric,
        "small": small["images"],
        "large": large["images"],
        "ratio_rss_sum": ratios["rss_sum"],
        "ratio_pss_sum": ratios.get("pss_sum"),
        "ratio": ratios[metric],
        "tolerance": MEMORY_TOLERANCE,
        "rss_flat": ratios[metric] <= MEMORY_TOLERANCE,
        "ratio_median_with_workers": medians[1] / medians[0] if all(medians) else None,
        "eval_marginal_images_per_s": marginal,
    }


# --- 2. throughput: loader + DeiT-S vs pre-decoded + DeiT-S ----------------------------------


def throughput(
    folder: Path, *, model_name: str, images: int, batch_size: int, repeats: int
) -> dict:
    """Images/s of ``model`` fed by ``bundle.batches`` and by a pre-decoded tensor, alternating."""
    import torch

    from vitquant.data import load_data
    from vitquant.data.loader import default_workers
    from vitquant.registry import load_model

    torch.manual_seed(0)
    bundle = load_data(folder, val=0, calib=0, limit=images)
    loaded = load_model(model_name, random_weights=True, num_classes=len(bundle.classes))
    model, spec = loaded.model.eval(), loaded.spec
    n = len(bundle.test_idx)

    first: list[torch.Tensor] = []

    def via_loader() -> float:
        start = time.perf_counter()
        for x, _ in bundle.batches("test", spec, batch_size=batch_size):
            model(x)
            if not first:
                first.append(x)
        return n / (time.perf_counter() - start)

    def pre_decoded(xs: torch.Tensor) -> float:
        start = time.perf_counter()
        for s in range(0, n, batch_size):
            model(xs[s : s + batch_size])
        return n / (time.perf_counter() - start)

    with torch.no_grad():
        # The same images through the same transform, decoded once beforehand: (n, 3, 224, 224).
        xs = torch.cat([x for x, _ in bundle.batches("test", spec, batch_size=batch_size)])
        model(xs[:batch_size])  # warm-up (allocator, kernels)
        rates = {"loader": [], "pre_decoded": []}
        for _ in range(repeats):
            rates["loader"].append(via_loader())
            rates["pre_decoded"].append(pre_decoded(xs))

    def summary(values: list[float]) -> dict:
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "repeats": values,
        }

    identical = torch.equal(first[0], xs[: len(first[0])])
    loader, decoded = summary(rates["loader"]), summary(rates["pre_decoded"])
    ratio = loader["median"] / decoded["median"]
    return {
        "model": model_name,
        "folder": str(folder),
        "images": n,
        "batch_size": batch_size,
        "input_shape": list(xs.shape[1:]),
        "workers": default_workers(),
        "torch_threads": torch.get_num_threads(),
        "order": "loader, pre_decoded, alternating",
        "inputs_identical": identical,
        "loader_images_per_s": loader,
        "pre_decoded_images_per_s": decoded,
        "ratio": ratio,
        # spread: worst and best pairing of the repeats
        "ratio_min": loader["min"] / decoded["max"],
        "ratio_max": loader["max"] / decoded["min"],
        "pair_ratios": [a / b for a, b in zip(rates["loader"], rates["pre_decoded"], strict=True)],
        "target": THROUGHPUT_TARGET,
        "loader_not_bottleneck": ratio >= THROUGHPUT_TARGET,
    }


# --- report ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(payload: dict) -> str:
    mem, thr = payload["memory"], payload["throughput"]
    lines = [
        f"memory: `vitquant eval {mem['model']}` (process tree, sampled every "
        f"{mem['runs'][0]['sample_interval_s'] * 1000:.0f} ms)",
        "",
        "| images | peak RSS sum (MB) | peak PSS sum (MB) | median while loading (MB) "
        "| max 1-proc RSS (MB) | processes | eval s | eval img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in mem["runs"]:
        lines.append(
            f"| {r['images']:,} | {r['peak_rss_sum_mb']:.0f} | {_fmt(r['peak_pss_sum_mb'], '.0f')} "
            f"| {_fmt(r['median_with_workers_mb'], '.0f')} "
            f"| {r['max_single_process_rss_mb']:.0f} | {r['peak_processes']} "
            f"| {r['seconds']:.1f} | {r['images_per_s']:.1f} |"
        )
    v = mem["verdict"]
    lines += [
        "",
        f"peak({v['large']:,}) / peak({v['small']:,}): RSS sum {v['ratio_rss_sum']:.3f}, "
        f"PSS sum {_fmt(v['ratio_pss_sum'], '.3f')}; verdict on {v['metric']}: "
        f"{'flat' if v['rss_flat'] else 'GROWS'} (<= {v['tolerance']:.2f}); "
        f"median while loading: {_fmt(v['ratio_median_with_workers'], '.3f')}",
        f"eval's marginal rate between the sizes (start-up and latency timing cancel): "
        f"{_fmt(v['eval_marginal_images_per_s'], '.1f')} images/s",
        "",
        f"throughput: {thr['model']}, {thr['images']} images, batch {thr['batch_size']}, "
        f"{thr['workers']} workers, {thr['torch_threads']} threads, "
        f"{payload['machine']['cpu_capability']}",
        "",
        "| input | median img/s | min | max |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (
        ("bundle.batches (DataLoader)", "loader_images_per_s"),
        ("pre-decoded tensor", "pre_decoded_images_per_s"),
    ):
        s = thr[key]
        lines.append(f"| {label} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    lines += [
        "",
        f"loader / pre-decoded: {thr['ratio']:.3f} (spread {thr['ratio_min']:.3f}.."
        f"{thr['ratio_max']:.3f}); {'OK' if thr['loader_not_bottleneck'] else 'BOTTLENECK'} "
        f"(>= {thr['target']:.2f})",
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes {text!r}: expected integers, e.g. 1000,10000"
        ) from None
    if len(sizes) < 2 or any(n <= 0 or n % CLASSES for n in sizes):
        raise argparse.ArgumentTypeError(
            f"--sizes {text!r}: expected at least two positive multiples of {CLASSES}"
        )
    return sorted(set(sizes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--sizes", type=parse_sizes, default="1000,10000", help="folder sizes of the memory runs")
    add("--model", default="timm:mobilenetv3_small_050", help="model of the memory runs")
    add("--throughput-model", default="timm:deit_small_patch16_224")
    add("--throughput-images", type=int, default=256)
    add("--batch-size", type=int, default=64, help="throughput batch size")
    add("--repeats", type=int, default=3, help="throughput repeats of each path")
    add("--interval", type=float, default=0.05, help="RSS sampling period (s)")
    add("--pss-interval", type=float, default=0.2, help="PSS sampling period (s)")
    add("--photos-root", type=Path, default=Path("runs/bench"), help="where photos-N are kept")
    add("--out", type=Path, default=Path("runs/bench/loader_memory.json"))
    add("--quick", action="store_true", help="sizes 100,300 and 32 throughput images (the test)")
    add("--check", action="store_true", help="exit 1 when a verdict fails")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.throughput_images = [100, 300], 32
    if args.throughput_images <= 0 or args.batch_size <= 0 or args.repeats < 1:
        parser.error("--throughput-images, --batch-size and --repeats must be positive")

    from vitquant.data.loader import default_workers
    from vitquant.registry import get_spec

    started = datetime.datetime.now(datetime.UTC)
    load = {"start": os.getloadavg()}
    machine = machine_info()
    input_size = list(get_spec(args.model).input_size)
    notes = []
    if input_size[1:] != [224, 224]:
        notes.append(f"{args.model} reads images at {input_size[1]}x{input_size[2]}, not 224")

    folders = {n: photo_folder(args.photos_root, n) for n in args.sizes}
    runs = []
    with tempfile.TemporaryDirectory(prefix="loader-memory-") as tmp:
        for n in args.sizes:
            out, pss_interval = Path(tmp) / f"eval-{n}", args.pss_interval
            run = run_eval(
                args.model,
                folders[n],
                n,
                out=out,
                interval=args.interval,
                pss_interval=pss_interval,
            )
            runs.append(run)
            print(f"  eval on {n:,} images: {runs[-1]['seconds']:.1f} s", file=sys.stderr)
    load["after_memory"] = os.getloadavg()

    # The throughput images are the first (stratified) images of the smallest folder that holds
    # enough of them.
    speed_n = next((n for n in args.sizes if n >= args.throughput_images), args.sizes[-1])
    speed = throughput(
        folders[speed_n],
        model_name=args.throughput_model,
        images=args.throughput_images,
        batch_size=args.batch_size,
        repeats=args.repeats,
    )
    load["end"] = os.getloadavg()

    cores = os.cpu_count() or 1
    if max(v[0] for v in load.values()) > 0.5 * cores:
        notes.append(
            f"shared machine: 1-minute load average up to {max(v[0] for v in load.values()):.1f} "
            f"on {cores} cores (this benchmark's own work included); timings are noisy"
        )
    payload = {
        "benchmark": "loader_memory",
        "date": started.isoformat(timespec="seconds"),
        "seconds": (datetime.datetime.now(datetime.UTC) - started).total_seconds(),
        "quick": args.quick,
        "machine": machine,
        "load_average": {k: list(v) for k, v in load.items()},
        "workers": default_workers(),
        "workers_env": os.environ.get("VITQUANT_WORKERS"),
        "memory": {
            "model": args.model,
            "input_size": input_size,
            "classes": CLASSES,
            "sizes": args.sizes,
            "runs": runs,
            "verdict": memory_verdict(runs),
        },
        "throughput": speed,
        "disk_cache": {
            "exists_for_folders": False,
            "default_limit_gib": None,
            "required_max_gib": DISK_CACHE_LIMIT_GIB,
            "note": "image folders have no disk cache: every batch is decoded from the JPEG "
            "files by DataLoader workers. (Only the shared CIFAR-10, equal-size 32x32 images, "
            "is decoded once into an .npz of about 180 MB in the user cache.)",
        },
        "notes": notes,
    }
    payload["verdicts"] = {
        "rss_flat": payload["memory"]["verdict"]["rss_flat"],
        "loader_not_bottleneck": speed["loader_not_bottleneck"],
    }
    write_json(args.out, payload)
    print(markdown(payload))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out}")
    if args.check and not all(payload["verdicts"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
