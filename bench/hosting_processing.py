"""Image hosting, processing (issue 12): validation + JPEG derivatives against Pillow with ``draft()``.

The bench makes three test JPEGs like the reference design's uploads (~200 KB 1200x800, ~2 MB
2560x1749, ~10 MB 10315x7049: gradients, edges and sensor-like noise, the noise tuned until the file
has the wanted size) and, in the same run, measures Tessera's pipeline (header probe,
``derivatives.decode`` with shrink-on-load and fail-on, ``derivatives.render`` of 1024/800/500 JPEG)
against the reference: Pillow used well (open, header limits, ``draft()`` to the JPEG's DCT scale,
``load()``, EXIF transpose, a Lanczos resize and a JPEG save per width, all at the same quality).

1. ``time``: milliseconds per upload, each size, the two pipelines interleaved (median of the reps,
   one upload at a time). Goal: Tessera / Pillow <= 0.5.
2. ``rss``: peak RSS of one 10 MB upload, each pipeline alone in a fresh subprocess that imports the
   same modules (``VmHWM``; also shown less the RSS before the upload). Goal: ratio <= 1.0.
3. ``throughput``: uploads/s of the 2 MB image on the 2 cores: Tessera with N threads (what the
   service runs: ``asyncio.to_thread``) against Pillow with 2 worker processes (and 2 threads; the
   better of the two is the reference). Goal: ratio >= 2.

    .venv/bin/python bench/hosting_processing.py                   # everything
    .venv/bin/python bench/hosting_processing.py --only time --reps 15 --vips-concurrency 1
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyvips
from PIL import Image, ImageOps

from tessera.hosting.derivatives import decode, qualities, render
from tessera.hosting.model import Limits, Probe, Rejected

WIDTHS = [1024, 800, 500]
QUALITY = 82
LIMITS = Limits(
    max_bytes=40 << 20, max_pixels=100_000_000, max_width=16_384, max_height=16_384, max_frames=100
)
#: (name, width, height, target bytes)
SIZES = [("200KB", 1200, 800, 200_000), ("2MB", 2560, 1749, 2_000_000), ("10MB", 10315, 7049, 10_000_000)]
CACHE = Path(tempfile.gettempdir()) / "tessera-bench-hosting"
GEN_VERSION = 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- test images ---------------------------------------------------------------------------------


def _photo(width: int, height: int, sigma: float) -> pyvips.Image:
    """Gradients, edges and ripples at several scales, plus slightly blurred sensor-like noise."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0].cast("float"), xyz[1].cast("float")
    red = x * (180.0 / width) + (x * (360.0 / 97)).sin() * 20 + 30
    green = y * (180.0 / height) + (y * (360.0 / 61) + x * (360.0 / 211)).sin() * 25 + 30
    blue = (
        (x + y) * (150.0 / (width + height)) + (x * (360.0 / 37)).sin() * (y * (360.0 / 53)).cos() * 15 + 50
    )
    noise = [
        pyvips.Image.gaussnoise(width, height, sigma=sigma * f, mean=0, seed=i)
        for i, f in enumerate((1, 0.7, 0.8))
    ]
    image = red.bandjoin([green, blue]) + noise[0].bandjoin(noise[1:]).gaussblur(0.6)
    return image.cast("uchar").copy(interpretation="srgb")


def test_jpeg(name: str, width: int, height: int, target: int) -> bytes:
    """A JPEG (quality 90) of about ``target`` bytes; made once and kept in the temporary folder."""
    path = CACHE / f"v{GEN_VERSION}-{name}-{width}x{height}.jpg"
    if path.exists():
        return path.read_bytes()
    # Noise is stationary: the size of a quarter-width crop x 16 predicts the whole file's.
    crop_w, crop_h = max(64, width // 4), max(64, height // 4)
    scale = (width * height) / (crop_w * crop_h)

    def estimate(sigma: float) -> float:
        return len(_photo(width, height, sigma).crop(0, 0, crop_w, crop_h).jpegsave_buffer(Q=90)) * scale

    low, high = 0.0, 60.0
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (mid, high) if estimate(mid) < target else (low, mid)
    data = bytes(_photo(width, height, (low + high) / 2).jpegsave_buffer(Q=90))
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --- the two pipelines ---------------------------------------------------------------------------


def check_header(width: int, height: int, frames: int = 1) -> None:
    if width * height > LIMITS.max_pixels or width > LIMITS.max_width or height > LIMITS.max_height:
        raise Rejected(422, "too large")
    if frames > LIMITS.max_frames:
        raise Rejected(422, "too many frames")


def tessera_pipeline(data: bytes) -> list[bytes]:
    """Header probe (libvips reads the header only), one decode, the JPEG widths from the largest down."""
    if data[:3] != b"\xff\xd8\xff":
        raise Rejected(415, "not a JPEG")
    header = pyvips.Image.jpegload_source(pyvips.Source.new_from_memory(data))
    orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    check_header(header.width, header.height)
    probe = Probe(type="jpeg", width=header.width, height=header.height, orientation=orientation)
    decoded = decode(data, probe, max(WIDTHS))
    return [r.data for r in render(decoded, WIDTHS, ["jpeg"], qualities(QUALITY, 80, 50))]


def pillow_pipeline(data: bytes) -> list[bytes]:
    """The reference: Pillow with ``draft()``, as a careful Pillow service does it."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "JPEG":
            raise Rejected(415, "not a JPEG")
        width, height = image.size
        check_header(width, height)
        # Swap for EXIF orientation 5-8 so the drafted size covers the upright width.
        swap = image.getexif().get(0x0112, 1) >= 5
        want = max(WIDTHS)
        want_h = round(want * (width if swap else height) / (height if swap else width))
        image.draft("RGB", (want_h, want) if swap else (want, want_h))
        image.load()  # the full decode (at the DCT scale): raises on truncated data
        upright = ImageOps.exif_transpose(image).convert("RGB")
    full_w, full_h = (height, width) if swap else (width, height)
    out = []
    for target in WIDTHS:
        w = min(target, full_w)
        resized = upright.resize((w, max(1, round(full_h * w / full_w))), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        resized.save(buffer, "JPEG", quality=QUALITY)
        out.append(buffer.getvalue())
    return out


def vips_thumbnail_pipeline(data: bytes) -> list[bytes]:
    """Attribution: pyvips used the usual way (``thumbnail_buffer`` to the largest width, fail-on in
    the option string, then ``thumbnail_image`` from it for each smaller width)."""
    header = pyvips.Image.jpegload_source(pyvips.Source.new_from_memory(data))
    check_header(header.width, header.height)
    image = pyvips.Image.thumbnail_buffer(
        data, max(WIDTHS), height=10_000_000, size="down", option_string="fail_on=truncated"
    ).copy_memory()
    out = []
    for width in WIDTHS:
        image = image.thumbnail_image(width, height=10_000_000, size="down").copy_memory()
        out.append(bytes(image.jpegsave_buffer(Q=QUALITY, strip=True)))
    return out


def decode_only(data: bytes) -> list[bytes]:
    """Attribution: the JPEG decode alone, at the DCT scale both pipelines use (the floor of both)."""
    header = pyvips.Image.jpegload_source(pyvips.Source.new_from_memory(data))
    shrink = _dct_shrink(header.width, max(WIDTHS))
    pyvips.Image.jpegload_source(pyvips.Source.new_from_memory(data), shrink=shrink).copy_memory()
    return []


def _dct_shrink(width: int, wanted: int) -> int:
    return next((s for s in (8, 4, 2) if -(-width // s) >= wanted), 1)


Pipeline = Callable[[bytes], list[bytes]]
PIPELINES: dict[str, Pipeline] = {"tessera": tessera_pipeline, "pillow": pillow_pipeline}
#: Measured beside the two in ``time`` only, to show where Tessera's pipeline gains.
ATTRIBUTION: dict[str, Pipeline] = {"vips_thumbnail": vips_thumbnail_pipeline, "decode_only": decode_only}


# --- measurements --------------------------------------------------------------------------------


def measure_time(images: dict[str, bytes], reps: int) -> list[dict[str, object]]:
    """Wall and CPU (every thread of the process) milliseconds per upload, interleaved, medians."""
    pipelines = PIPELINES | ATTRIBUTION
    rows = []
    for name, data in images.items():
        for pipeline in pipelines.values():
            pipeline(data)  # warm-up (libraries, allocator)
        wall: dict[str, list[float]] = {key: [] for key in pipelines}
        cpu: dict[str, list[float]] = {key: [] for key in pipelines}
        for rep in range(reps):
            order = list(pipelines) if rep % 2 == 0 else list(reversed(pipelines))
            for key in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                pipelines[key](data)
                wall[key].append((time.perf_counter() - start) * 1000)
                cpu[key].append((time.process_time() - start_cpu) * 1000)
        row: dict[str, object] = {"size": name, "bytes": len(data)}
        for key in pipelines:
            row[f"{key}_ms"] = statistics.median(wall[key])
            row[f"{key}_cpu_ms"] = statistics.median(cpu[key])
        row["ratio"] = statistics.median(wall["tessera"]) / statistics.median(wall["pillow"])
        row["cpu_ratio"] = statistics.median(cpu["tessera"]) / statistics.median(cpu["pillow"])
        row["decode_share_of_pillow"] = statistics.median(cpu["decode_only"]) / statistics.median(
            cpu["pillow"]
        )
        rows.append(row)
        log(f"time {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    return rows


_RSS_CHILD = """
import sys, json
from pathlib import Path
sys.path.insert(0, {bench!r})
import hosting_processing as hp
if {concurrency}:
    hp.pyvips.concurrency_set({concurrency})
data = Path({path!r}).read_bytes()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
hp.PIPELINES[{key!r}](data)
print(json.dumps({{"before": before, "peak": status("VmHWM")}}))
"""


def measure_rss(path: Path, reps: int, concurrency: int) -> dict[str, object]:
    results: dict[str, list[dict[str, int]]] = {"tessera": [], "pillow": []}
    for _ in range(reps):
        for key in PIPELINES:
            code = _RSS_CHILD.format(
                bench=str(Path(__file__).parent), path=str(path), key=key, concurrency=concurrency
            )
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout
            results[key].append(json.loads(out))
    row: dict[str, object] = {}
    for key, runs in results.items():
        row[f"{key}_peak_mib"] = statistics.median(r["peak"] for r in runs) / 2**20
        row[f"{key}_growth_mib"] = statistics.median(r["peak"] - r["before"] for r in runs) / 2**20
    row["ratio"] = float(row["tessera_peak_mib"]) / float(row["pillow_peak_mib"])  # type: ignore[arg-type]
    row["growth_ratio"] = float(row["tessera_growth_mib"]) / float(row["pillow_growth_mib"])  # type: ignore[arg-type]
    log(f"rss 10MB: {row}")
    return row


def _loop(pipeline: Pipeline, data: bytes, start: float, seconds: float) -> int:
    """Uploads done from ``start`` (a ``time.time()``, the same in every worker) for ``seconds``."""
    pipeline(data)  # warm-up, before the clock
    time.sleep(max(0.0, start - time.time()))
    done, until = 0, start + seconds
    while time.time() < until:
        pipeline(data)
        done += 1
    return done


def _threads_rate(pipeline: Pipeline, data: bytes, workers: int, seconds: float) -> tuple[float, float]:
    """Uploads/s of ``workers`` threads, and the CPU ms (every thread of the process) per upload."""
    counts = [0] * workers
    start = time.time() + 1.0

    def run(i: int) -> None:
        counts[i] = _loop(pipeline, data, start, seconds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.time()))
    cpu = time.process_time()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.time() - start, time.process_time() - cpu
    return sum(counts) / elapsed, cpu * 1000 / sum(counts)


def _pillow_worker(path: str, start: float, seconds: float) -> tuple[int, float, float]:
    data = Path(path).read_bytes()
    pillow_pipeline(data)
    time.sleep(max(0.0, start - time.time()))
    cpu = time.process_time()
    done = _loop(pillow_pipeline, data, start, seconds)
    return done, time.process_time() - cpu, time.time()


def _processes_rate(path: Path, workers: int, seconds: float) -> tuple[float, float]:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(abs, range(workers)))  # the workers exist before the clock
        start = time.time() + 1.0
        args = ([str(path)] * workers, [start] * workers, [seconds] * workers)
        results = list(pool.map(_pillow_worker, *args))
    done = sum(r[0] for r in results)
    return done / (max(r[2] for r in results) - start), sum(r[1] for r in results) * 1000 / done


def measure_throughput(
    path: Path, seconds: float, rounds: int, thread_counts: list[int]
) -> dict[str, object]:
    """Uploads/s of each set-up, the set-ups taking turns ``rounds`` times (medians): the machine's
    other load then weighs on all of them alike."""
    data = path.read_bytes()
    setups: dict[str, Callable[[], tuple[float, float]]] = {
        "pillow_processes_2": lambda: _processes_rate(path, 2, seconds),
        "pillow_threads_2": lambda: _threads_rate(pillow_pipeline, data, 2, seconds),
    }
    for n in thread_counts:
        setups[f"tessera_threads_{n}"] = functools.partial(_threads_rate, tessera_pipeline, data, n, seconds)
    rates: dict[str, list[float]] = {name: [] for name in setups}
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            rate, cpu_ms = setup()
            rates[name].append(rate)
            cpu[name].append(cpu_ms)
    row: dict[str, object] = {name: statistics.median(values) for name, values in rates.items()}
    row["cpu_ms_per_upload"] = {name: statistics.median(values) for name, values in cpu.items()}
    row["runs"] = rates
    reference = max(statistics.median(rates[name]) for name in setups if name.startswith("pillow"))
    best = max(statistics.median(rates[name]) for name in setups if name.startswith("tessera"))
    row["ratio"] = best / reference
    cpu_ref = min(statistics.median(cpu[name]) for name in setups if name.startswith("pillow"))
    cpu_ours = min(statistics.median(cpu[name]) for name in setups if name.startswith("tessera"))
    row["cpu_ratio"] = cpu_ref / cpu_ours
    log(f"throughput 2MB: {row}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["time", "rss", "throughput"], action="append")
    parser.add_argument("--reps", type=int, default=11, help="timed uploads per size and pipeline")
    parser.add_argument("--rss-reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every throughput set-up")
    parser.add_argument("--threads", default="2,3,4", help="Tessera worker threads tried for throughput")
    parser.add_argument(
        "--vips-concurrency", type=int, default=0, help="libvips threads per image (0: default)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.vips_concurrency:
        pyvips.concurrency_set(args.vips_concurrency)
    only = set(args.only or ["time", "rss", "throughput"])
    version = ".".join(str(pyvips.version(i)) for i in range(3))
    log(f"libvips {version}, concurrency {pyvips.concurrency_get()}, load {os.getloadavg()[0]:.2f}")
    images = {name: test_jpeg(name, w, h, target) for name, w, h, target in SIZES}
    for name, data in images.items():
        log(f"test image {name}: {len(data):,} bytes")
    for name, data in images.items():  # both pipelines give the same widths
        ours = [Image.open(io.BytesIO(d)).size for d in tessera_pipeline(data)]
        ref = [Image.open(io.BytesIO(d)).size for d in pillow_pipeline(data)]
        assert ours == ref, (name, ours, ref)
    results: dict[str, object] = {"concurrency": pyvips.concurrency_get(), "load": os.getloadavg()[0]}
    if "time" in only:
        results["time"] = measure_time(images, args.reps)
    if "rss" in only:
        path = CACHE / f"v{GEN_VERSION}-10MB-10315x7049.jpg"
        results["rss"] = measure_rss(path, args.rss_reps, args.vips_concurrency)
    if "throughput" in only:
        path = CACHE / f"v{GEN_VERSION}-2MB-2560x1749.jpg"
        threads = [int(n) for n in args.threads.split(",")]
        results["throughput"] = measure_throughput(path, args.seconds, args.rounds, threads)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
