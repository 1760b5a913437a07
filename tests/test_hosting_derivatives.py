"""Derivatives of uploads, on real images made here: sizes, orientation, colour, metadata, damage, threads."""

from __future__ import annotations

import importlib
import io
import logging
import threading

import pytest
import pyvips
from PIL import Image

from tessera.hosting import derivatives
from tessera.hosting.derivatives import Decoded, available_formats, decode, effective_width, qualities, render
from tessera.hosting.model import Format, ImageType, Probe, Rejected

QUALITIES = qualities(jpeg=82, webp=80, avif=50)
WIDTHS = [1024, 800, 500]
_LOADERS: dict[str, ImageType] = {"jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif", "heif": "heif"}
COPYRIGHT, GPS_IFD, MAKE = 0x8298, 0x8825, 0x010F


def probe_of(data: bytes) -> Probe:
    """What the validation step gives: the header's type, size and EXIF orientation."""
    header = pyvips.Image.new_from_buffer(data, "")
    loader = header.get("vips-loader").removesuffix("load_buffer")
    orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    pages = header.get("n-pages") if header.get_typeof("n-pages") else 1
    return Probe(_LOADERS[loader], header.width, header.height, frames=pages, orientation=orientation)


def picture(width: int, height: int) -> pyvips.Image:
    """A picture with detail everywhere (so that damage to any part of the file shows)."""
    xyz = pyvips.Image.xyz(width, height)
    return (
        ((xyz[0] * 3 + xyz[1] * 5) % 256)
        .bandjoin([xyz[0] % 256, xyz[1] % 256])
        .cast("uchar")
        .copy(interpretation="srgb")
    )


def quadrants(width: int, height: int) -> Image.Image:
    """Red top-left quadrant, blue elsewhere: shows which way up an image came out."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    return image


def jpeg(image: Image.Image, exif: Image.Exif | None = None, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes() if exif is not None else b"", **options)
    return buffer.getvalue()


def derive(
    data: bytes, widths: list[int] = WIDTHS, formats: list[Format] | None = None, **kw: bool
) -> list[derivatives.Rendition]:
    decoded = decode(data, probe_of(data), max(widths))
    return render(decoded, widths, formats or ["jpeg"], QUALITIES, **kw)


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_widths_are_exact_largest_first_each_from_the_last() -> None:
    data = bytes(picture(2000, 1500).jpegsave_buffer(Q=90))
    out = derive(data, formats=["jpeg", "webp"])
    assert [(r.width, r.format) for r in out] == [
        (1024, "jpeg"), (1024, "webp"), (800, "jpeg"), (800, "webp"), (500, "jpeg"), (500, "webp")
    ]  # fmt: skip
    for rendition in out:
        image = opened(rendition.data)
        assert (
            image.size
            == (rendition.width, rendition.height)
            == (rendition.width, round(1500 * rendition.width / 2000))
        )
        assert image.format == {"jpeg": "JPEG", "webp": "WEBP"}[rendition.format]


def test_decode_shrinks_on_load_to_the_largest_width() -> None:
    data = bytes(picture(4100, 2000).jpegsave_buffer(Q=90))
    decoded = decode(data, probe_of(data), 1024)
    assert (decoded.width, decoded.height) == (1024, 500)
    assert derivatives._jpeg_shrink(4100, 1024) == 4  # 4100 / 4 = 1025 still covers 1024
    assert derivatives._jpeg_shrink(4100, 1026) == 2


def test_never_upscaled_one_rendition_per_distinct_width() -> None:
    data = bytes(picture(640, 480).jpegsave_buffer(Q=90))
    out = derive(data)
    assert [(r.width, r.height) for r in out] == [(640, 480), (500, 375)]
    assert [opened(r.data).size for r in out] == [(640, 480), (500, 375)]
    tiny = bytes(picture(1, 1).pngsave_buffer())
    assert [(r.width, r.height) for r in derive(tiny)] == [(1, 1)]
    assert effective_width(1024, 640) == 640
    assert effective_width(500, 640) == 500


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_phone_photo_comes_out_upright(orientation: int) -> None:
    upright = quadrants(1200, 800)
    # What a phone stores: the sensor's pixels, plus the EXIF tag saying how to turn them.
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[
            orientation
        ]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(stored, exif)
    out = derive(data)
    assert [r.width for r in out] == [1024, 800, 500]
    for rendition in out:
        image = opened(rendition.data).convert("RGB")
        assert image.size == (rendition.width, round(800 * rendition.width / 1200))
        assert image.getexif().get(0x0112, 1) == 1  # no tag left to turn it a second time
        w, h = image.size
        red, blue = pixel(image, w // 4, h // 4), pixel(image, 3 * w // 4, 3 * h // 4)
        assert red[0] > 200 and red[2] < 60, red
        assert blue[2] > 200 and blue[0] < 60, blue
        assert pixel(image, 3 * w // 4, h // 4)[2] > 200  # top-right is blue too


def test_cmyk_jpeg_becomes_8_bit_srgb() -> None:
    cmyk = Image.new("CMYK", (300, 200), (255, 0, 0, 0))  # pure cyan ink
    decoded = decode(jpeg(cmyk), probe_of(jpeg(cmyk)), 1024)
    assert (decoded.image.interpretation, decoded.image.format, decoded.image.bands) == ("srgb", "uchar", 3)
    r, g, b = decoded.image(150, 100)
    assert r < 80 and g > 120 and b > 180, (r, g, b)
    out = render(decoded, WIDTHS, ["jpeg", "webp"], QUALITIES)
    assert {opened(x.data).mode for x in out} == {"RGB"}


def test_16_bit_and_grey_become_8_bit_srgb() -> None:
    rgb16 = pyvips.Image.black(200, 100, bands=3).cast("ushort").new_from_image([65535, 32768, 0])
    rgb16 = rgb16.copy(interpretation="rgb16")
    data = bytes(rgb16.pngsave_buffer())
    decoded = decode(data, probe_of(data), 1024)
    assert (decoded.image.interpretation, decoded.image.format, decoded.image.bands) == ("srgb", "uchar", 3)
    r, g, b = decoded.image(100, 50)
    assert r == 255 and 120 <= g <= 135 and b == 0, (r, g, b)
    grey16 = (pyvips.Image.black(200, 100) + 40000).cast("ushort").copy(interpretation="grey16")
    data = bytes(grey16.pngsave_buffer())
    decoded = decode(data, probe_of(data), 1024)
    assert (decoded.image.format, decoded.image.bands) == ("uchar", 3)
    assert len(set(decoded.image(10, 10))) == 1  # still grey
    assert opened(render(decoded, [500], ["jpeg"], QUALITIES)[0].data).mode == "RGB"


def test_alpha_flattened_for_jpeg_kept_for_webp_and_avif() -> None:
    rgba = Image.new("RGBA", (400, 300), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (0, 0, 200, 300))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    out = {r.format: opened(r.data) for r in derive(buffer.getvalue(), [400], ["jpeg", "webp", "avif"])}
    assert out["jpeg"].mode == "RGB"
    assert pixel(out["jpeg"], 300, 150) == pytest.approx((255, 255, 255), abs=8)  # transparent -> white
    assert pixel(out["jpeg"], 100, 150)[1] > 240
    assert out["webp"].mode == "RGBA" and pixel(out["webp"], 300, 150)[3] == 0
    assert pixel(out["webp"], 100, 150)[3] == 255
    assert out["avif"].format == "AVIF" and out["avif"].mode == "RGBA"
    assert pixel(out["avif"], 300, 150)[3] == 0 and pixel(out["avif"], 100, 150)[3] == 255


def phone_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "PhoneCo"
    exif[0x0110] = "Model X"
    exif[COPYRIGHT] = "(c) Jane Doe"
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif


def test_gps_and_all_metadata_gone_by_default() -> None:
    source = jpeg(quadrants(1200, 800), phone_exif())
    assert opened(source).getexif().get_ifd(GPS_IFD)  # the test photo really has a location
    for rendition in derive(source, formats=["jpeg", "webp", "avif"]):
        image = opened(rendition.data)
        assert not dict(image.getexif()) and not image.getexif().get_ifd(GPS_IFD), rendition.format
        assert not {"exif", "xmp", "icc_profile", "photoshop"} & set(image.info), rendition.format
        assert b"PhoneCo" not in rendition.data and b"Jane Doe" not in rendition.data


def test_keep_copyright_keeps_that_field_only() -> None:
    source = jpeg(quadrants(1200, 800), phone_exif())
    for rendition in derive(source, formats=["jpeg", "webp"], keep_copyright=True):
        exif = opened(rendition.data).getexif()
        assert exif.get(COPYRIGHT) == "(c) Jane Doe", rendition.format
        assert not exif.get_ifd(GPS_IFD) and MAKE not in exif and 0x0110 not in exif
    avif = opened(derive(source, [500], ["avif"], keep_copyright=True)[0].data).getexif()
    assert avif.get(COPYRIGHT) == "(c) Jane Doe" and not avif.get_ifd(GPS_IFD) and MAKE not in avif
    plain = pyvips.Image.new_from_buffer(bytes(picture(600, 400).jpegsave_buffer()), "")
    assert (
        decode(bytes(plain.jpegsave_buffer()), probe_of(bytes(plain.jpegsave_buffer())), 500).copyright
        is None
    )


def _encoded(kind: str) -> bytes:
    image = picture(900, 600)
    return bytes(
        {"jpeg": image.jpegsave_buffer, "png": image.pngsave_buffer, "webp": image.webpsave_buffer}[kind]()
    )


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_upload_is_rejected_422(kind: str, keep: float) -> None:
    data = _encoded(kind)
    probe = probe_of(data)
    assert decode(data, probe, 1024).width == 900  # the whole file is fine
    with pytest.raises(Rejected) as caught:
        decode(data[: int(len(data) * keep)], probe, 1024)
    assert caught.value.status == 422
    assert kind in caught.value.reason


def test_corrupt_data_in_the_middle_is_rejected_422() -> None:
    data = bytearray(_encoded("png"))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a damaged IDAT: CRC and inflate fail
    with pytest.raises(Rejected) as caught:
        decode(bytes(data), probe_of(_encoded("png")), 1024)
    assert caught.value.status == 422


def test_animation_gives_its_first_frame() -> None:
    frame = pyvips.Image.black(120, 80, bands=3)
    red, green, blue = (frame.new_from_image(c) for c in ([255, 0, 0], [0, 255, 0], [0, 0, 255]))
    strip = red.join(green, "vertical").join(blue, "vertical").cast("uchar").copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 80)
    data = bytes(strip.webpsave_buffer(lossless=True))
    assert probe_of(data).frames == 3
    decoded = decode(data, probe_of(data), 1024)
    assert (decoded.width, decoded.height) == (120, 80)
    assert decoded.image(60, 70)[:3] == [255, 0, 0]


@pytest.fixture
def gif_and_heif_loaders() -> None:
    """The process as the server has it: ``tessera.images.source`` blocks every libvips loader but
    those it names, and hosting needs the GIF and HEIF ones among them."""
    importlib.import_module("tessera.images.source")


@pytest.mark.usefixtures("gif_and_heif_loaders")
def test_animated_gif_gives_its_first_frame() -> None:
    frame = pyvips.Image.black(120, 80, bands=3)
    red, green, blue = (frame.new_from_image(c) for c in ([255, 0, 0], [0, 255, 0], [0, 0, 255]))
    strip = red.join(green, "vertical").join(blue, "vertical").cast("uchar").copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 80)
    data = bytes(strip.gifsave_buffer())
    probe = Probe("gif", 120, 80, frames=3)
    decoded = decode(data, probe, 1024)
    assert (decoded.width, decoded.height) == (120, 80)
    r, g, b = decoded.image(60, 40)[:3]
    assert r > 200 and g < 50 and b < 50, (r, g, b)


@pytest.mark.usefixtures("gif_and_heif_loaders")
@pytest.mark.parametrize("compression", ["av1", "hevc"])
def test_avif_and_heif_uploads_decode(compression: str) -> None:
    data = bytes(picture(1600, 1000).heifsave_buffer(compression=compression, Q=80))
    kind: ImageType = "avif" if compression == "av1" else "heif"
    decoded = decode(data, Probe(kind, 1600, 1000), 1024)
    assert (decoded.width, decoded.height, decoded.image.format) == (1024, 640, "uchar")
    with pytest.raises(Rejected) as caught:
        decode(data[: len(data) // 2], Probe(kind, 1600, 1000), 1024)
    assert caught.value.status == 422


def test_threads_at_once_give_the_same_bytes_as_one_at_a_time() -> None:
    sources = [
        jpeg(quadrants(1600, 1200), phone_exif()),
        bytes(picture(2100, 1300).jpegsave_buffer(Q=85)),
        bytes(picture(1300, 900).pngsave_buffer()),
        bytes(picture(1500, 1000).webpsave_buffer()),
    ]

    def run(data: bytes) -> list[tuple[int, str, bytes]]:
        return [(r.width, r.format, r.data) for r in derive(data, formats=["jpeg", "webp"])]

    expected = [run(data) for data in sources]
    results: dict[int, list[list[tuple[int, str, bytes]]]] = {i: [] for i in range(len(sources))}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for _ in range(3):
                results[index % len(sources)].append(run(sources[index % len(sources)]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, runs in results.items():
        assert len(runs) == 6
        assert all(run_ == expected[index] for run_ in runs)


def test_avif_is_offered_when_libvips_encodes_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert derivatives.can_encode_avif()  # libheif with AV1 is installed here
    assert available_formats(["jpeg", "webp", "avif"]) == ["jpeg", "webp", "avif"]
    # A libvips without it: AVIF is dropped, with one warning however often it is asked.
    monkeypatch.setattr(derivatives, "can_encode_avif", lambda: False)
    derivatives._warn_no_avif.cache_clear()
    with caplog.at_level(logging.WARNING, logger="tessera.hosting.derivatives"):
        assert available_formats(["jpeg", "avif", "webp"]) == ["jpeg", "webp"]
        assert available_formats(["avif", "jpeg"]) == ["jpeg"]
    assert len([r for r in caplog.records if "AVIF" in r.getMessage()]) == 1


def test_decoded_is_in_memory_and_renders_without_the_upload() -> None:
    data = bytes(picture(1200, 900).jpegsave_buffer(Q=90))
    decoded = decode(data, probe_of(data), 800)
    assert isinstance(decoded, Decoded) and (decoded.width, decoded.height) == (800, 600)
    del data
    out = render(decoded, [1024, 800, 640], ["jpeg"], QUALITIES)
    assert [r.width for r in out] == [800, 640]
