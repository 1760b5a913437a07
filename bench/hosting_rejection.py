"""Upload rejection (issue 12): every hostile file through ``sniff`` + ``probe``, CPU per file.

Goal: every file of the corpus (``tests/support/bad_images.py``) refused with its status; the bombs
(50,000 x 50,000 PNG, JPEG claiming 65,000 x 65,000, GIF of 10,000 frames) in < 1 ms of CPU each.
References in the same run, on the same bytes and limits:

- Pillow: ``Image.open`` with ``MAX_IMAGE_PIXELS`` set to the pixel limit (its bomb warning turned into
  an error), plus ``n_frames`` against the frame limit for animations (what Thumbor-style checks do);
- libvips' header-only load: ``pyvips.Image.new_from_buffer(data, "", access="sequential")`` and its
  width, height and ``n-pages``, judged against the same limits (the option ``probe`` did not take for
  JPEG, PNG, GIF and WebP; see the docstring of ``tessera.hosting.probe``).

A second table gives ``probe``'s cost on good JPEGs of the sizes of the reference design (it walks the
markers to the end of the image with a regular expression, to find truncation and appended files).

CPU is ``time.process_time`` (this process, all threads), the median of 5 batches, each batch long
enough to last ~20 ms. The script exits with 1 if a file is accepted, gets another status, or a bomb
takes 1 ms or more.

    .venv/bin/python bench/hosting_rejection.py [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyvips
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.hosting.model import Limits, Rejected
from tessera.hosting.probe import probe
from tests.support.bad_images import LIMITS, bad_corpus

BOMBS = ("bomb-50000x50000.png", "sof-65000x65000.jpg", "frames-10000.gif")
#: The reference design's uploads (issue 12): ~200 KB, ~2 MB, ~10 MB JPEGs (width, height, noise sigma).
GOOD_SIZES = ((1200, 800, 20), (2560, 1749, 65), (10315, 7049, 12))
#: The 10315 x 7049 image is 72.7 MP: over the default 50 MP, so its row is probed with a 100 MP limit.
GOOD_LIMITS = dataclasses.replace(LIMITS, max_pixels=100_000_000)


def photo_like(width: int, height: int, sigma: float) -> bytes:
    """A JPEG with gradients and noise: ``sigma`` sets its bytes per pixel."""
    ramp = pyvips.Image.xyz(width, height)
    grey = (
        ramp[0] * 255 / width + ramp[1] * 127 / height + pyvips.Image.gaussnoise(width, height, sigma=sigma)
    )
    return bytes(grey.bandjoin([grey * 0.8, grey * 0.6]).cast("uchar").jpegsave_buffer(Q=85))


def cpu_per_call(call: Callable[[], object]) -> float:
    """Median CPU seconds per call over 5 batches of ~20 ms each."""
    started = time.process_time()
    call()
    once = max(time.process_time() - started, 1e-6)
    reps = max(1, min(2000, int(0.02 / once)))
    batches = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(reps):
            call()
        batches.append((time.process_time() - started) / reps)
    return statistics.median(batches)


def _verdict(call: Callable[[], object]) -> str:
    try:
        call()
    except Rejected as rejected:
        return str(rejected.status)
    except Exception as error:  # the references refuse by raising whatever they raise
        return f"refused ({type(error).__name__})"
    return "accepted"


def tessera(data: bytes, limits: Limits) -> Callable[[], object]:
    return lambda: probe(data, limits)


def pillow(data: bytes, limits: Limits) -> Callable[[], object]:
    def run() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        frames = getattr(image, "n_frames", 1)
        if image.width * image.height > limits.max_pixels or frames > limits.max_frames:
            raise ValueError("over the limits")
        if image.width > limits.max_width or image.height > limits.max_height:
            raise ValueError("over the limits")
        return image.size

    return run


def libvips_header(data: bytes, limits: Limits) -> Callable[[], object]:
    def run() -> object:
        image = pyvips.Image.new_from_buffer(data, "", access="sequential")
        frames = image.get("n-pages") if image.get_typeof("n-pages") else 1
        if image.width * image.height > limits.max_pixels or frames > limits.max_frames:
            raise ValueError("over the limits")
        if image.width > limits.max_width or image.height > limits.max_height:
            raise ValueError("over the limits")
        return image.width, image.height, frames

    return run


def _quiet(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with exceptions swallowed, for timing."""

    def run() -> object:
        try:
            return call()
        except Exception as error:
            return error

    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    Image.MAX_IMAGE_PIXELS = LIMITS.max_pixels
    os.environ.setdefault("VIPS_WARNING", "0")
    started = time.perf_counter()
    corpus = bad_corpus()
    print(f"corpus built in {time.perf_counter() - started:.1f} s: {len(corpus)} files", file=sys.stderr)
    rows, failures = [], []
    for name, (data, status) in corpus.items():
        row: dict[str, object] = {"file": name, "bytes": len(data), "expected": status}
        for label, make in (("tessera", tessera), ("pillow", pillow), ("libvips", libvips_header)):
            call = make(data, LIMITS)
            row[f"{label}_verdict"] = _verdict(call)
            row[f"{label}_us"] = cpu_per_call(_quiet(call)) * 1e6
        if row["tessera_verdict"] != str(status):
            failures.append(f"{name}: {row['tessera_verdict']}, expected {status}")
        if name in BOMBS and float(str(row["tessera_us"])) >= 1000:
            failures.append(f"{name}: {row['tessera_us']:.0f} µs of CPU")
        rows.append(row)
        print(f"  {name}: {row['tessera_verdict']} in {row['tessera_us']:.1f} µs", file=sys.stderr)

    print(f"## Rejection: sniff + probe, CPU per file (load average {os.getloadavg()[0]:.2f})\n")
    print("| file | bytes | want | Tessera | CPU µs | Pillow open | CPU µs | libvips header | CPU µs |")
    print("|---|---:|---:|---|---:|---|---:|---|---:|")
    for row in rows:
        mark = "**" if row["file"] in BOMBS else ""
        print(
            f"| {mark}{row['file']}{mark} | {row['bytes']:,} | {row['expected']} | "
            f"{row['tessera_verdict']} | {row['tessera_us']:.1f} | "
            f"{row['pillow_verdict']} | {row['pillow_us']:.1f} | "
            f"{row['libvips_verdict']} | {row['libvips_us']:.1f} |"
        )
    refused = sum(1 for row in rows if row["tessera_verdict"] == str(row["expected"]))
    pillow_refused = sum(1 for row in rows if row["pillow_verdict"] != "accepted")
    libvips_refused = sum(1 for row in rows if row["libvips_verdict"] != "accepted")
    print(
        f"\nRefused with the expected status: {refused}/{len(rows)} (Pillow open refuses {pillow_refused}, "
        f"libvips' header load {libvips_refused})."
    )
    bomb_rows = [row for row in rows if row["file"] in BOMBS]
    print("\n| bomb | Tessera CPU µs | Pillow CPU ÷ Tessera's | libvips CPU ÷ Tessera's | goal < 1,000 µs |")
    print("|---|---:|---:|---:|---|")
    for row in bomb_rows:
        ours = float(str(row["tessera_us"]))
        pillow_ratio = float(str(row["pillow_us"])) / ours
        libvips_ratio = float(str(row["libvips_us"])) / ours
        verdict = "pass" if ours < 1000 else "FAIL"
        print(f"| {row['file']} | {ours:.1f} | {pillow_ratio:.1f} | {libvips_ratio:.1f} | {verdict} |")

    good = []
    Image.MAX_IMAGE_PIXELS = GOOD_LIMITS.max_pixels
    for width, height, sigma in GOOD_SIZES:
        data = photo_like(width, height, sigma)
        entry: dict[str, object] = {"size": f"{width} x {height}", "bytes": len(data)}
        for label, make in (("tessera", tessera), ("pillow", pillow), ("libvips", libvips_header)):
            call = make(data, GOOD_LIMITS)
            if _verdict(call) != "accepted":
                failures.append(f"good {width} x {height}: {label} says {_verdict(call)}")
            entry[f"{label}_us"] = cpu_per_call(call) * 1e6
        good.append(entry)
    print("\n## probe on good JPEGs (walks every marker to EOI, scans found with a regular expression)\n")
    print("| image | bytes | Tessera CPU µs | Pillow open µs | libvips header µs |")
    print("|---|---:|---:|---:|---:|")
    for entry in good:
        print(
            f"| {entry['size']} | {entry['bytes']:,} | {entry['tessera_us']:.0f} | "
            f"{entry['pillow_us']:.0f} | {entry['libvips_us']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"rejection": rows, "good": good}, indent=1))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
