"""Reading every sample type and layout correctly or refusing it clearly (issue 21 item 4), keeping
EXIF / ICC metadata, and vlir's pixel limit checked from the header (issue 21 item 3).

Each file is built here with tifffile, Pillow or OpenCV; checks go through ``read_image`` and
through ``vlir restore`` on a tiny saved pipeline."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vlir.core.cli import main
from vlir.core.data import images
from vlir.core.data.images import ImageError, PixelLimitError, dropped_metadata, orient, read_image

tifffile = pytest.importorskip("tifffile")
cv2 = pytest.importorskip("cv2")
from PIL import Image, ImageOps  # noqa: E402



def _srgb() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


ICC = _srgb()


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from vlir.core.pipeline import Pipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    Pipeline.from_spec({"perceivers": [{"type": "daclip", "preset": "tiny",
                                        "params": {"degradations": ["noisy", "blurry"]}}],
                        "backbone": {"type": "nafnet", "preset": "tiny"}}).save(folder)
    return folder


def restore(*argv) -> int:
    return main(["restore", "--no-progress", "--device", "cpu", *map(str, argv)])


def ramp(h: int, w: int, c: int = 3) -> np.ndarray:
    """Distinct values in [0, 1): every pixel and channel differs, so flips and turns show."""
    return (np.arange(h * w * c, dtype=np.float64).reshape(h, w, c) / (h * w * c)).astype(np.float32)


def exif_bytes(orientation: int = 1) -> bytes:
    e = Image.Exif()
    e[0x010F] = "TestCam"  # Make
    e[0x0112] = orientation
    return e.tobytes()


def line_of(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if name in line)


# -- sample values -----------------------------------------------------------------------------
def test_float_tiff_in_unit_range_is_read_as_is_and_written_as_float(tiny_pipeline, tmp_path, capsys):
    a = ramp(20, 30)  # 3-channel float32: Pillow cannot open it, tifffile can
    tifffile.imwrite(tmp_path / "f.tif", a, photometric="rgb")
    t, info = read_image(tmp_path / "f.tif")
    assert info["bit_depth"] == 32 and info["size"] == (30, 20)
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), a, atol=1e-7)
    assert restore(tmp_path / "f.tif", "-o", tmp_path / "out", "--pipeline", tiny_pipeline) == 0
    out = tifffile.imread(tmp_path / "out" / "f.tif")
    assert out.dtype == np.float32 and out.shape == (20, 30, 3)


def test_float_tiff_outside_unit_range_is_refused_with_the_range(tiny_pipeline, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "f255.tif", ramp(16, 16, 1)[..., 0] * 255)  # 0..255 floats: was all white
    with pytest.raises(ImageError, match=r"range 0\.\.2\d\d\.\d+, outside \[0, 1\]"):
        read_image(tmp_path / "f255.tif")
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ImageError, match="NaN"):
        read_image(tmp_path / "nan.tif")
    rc = restore(tmp_path / "f255.tif", "-o", tmp_path / "out", "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 1
    assert str(tmp_path / "f255.tif") in err and "outside [0, 1]" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "f255.tif").exists()


def test_int32_tiff_is_read_as_16_bit_or_refused(tmp_path):
    a = (ramp(12, 10, 1)[..., 0] * 60000).astype(np.int32)  # fits 0..65535: was 98% saturated
    tifffile.imwrite(tmp_path / "i32.tif", a)
    t, info = read_image(tmp_path / "i32.tif")
    assert info["bit_depth"] == 16 and "int32 samples read as 16-bit" in info["converted"]
    np.testing.assert_allclose(t[0].numpy(), a / 65535.0, atol=1e-6)
    assert float(t.max()) < 0.92  # not saturated
    tifffile.imwrite(tmp_path / "big.tif", a * 10)
    with pytest.raises(ImageError, match=r"int32 samples range 0\.\.\d+.*16-bit \(0\.\.65535\)"):
        read_image(tmp_path / "big.tif")


# -- orientation -------------------------------------------------------------------------------
@pytest.mark.parametrize("o", range(1, 9))
def test_orient_matches_pillow(o):
    a = (ramp(5, 7) * 255).astype(np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = o
    im.info["exif"] = exif.tobytes()
    im._exif = exif
    want = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(orient(a, o), want)


def test_16_bit_png_with_exif_orientation_is_turned_and_keeps_exif_and_icc(tiny_pipeline, tmp_path, capsys):
    a = ramp(20, 30)
    ok, png = cv2.imencode(".png", np.round(a[..., ::-1] * 65535).astype(np.uint16))
    assert ok
    path = tmp_path / "deep.png"
    path.write_bytes(images._png_with_metadata(png.tobytes(), exif_bytes(6), ICC))
    t, info = read_image(path)
    assert info["bit_depth"] == 16 and info["size"] == (20, 30)  # turned: 20 wide, 30 high
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), np.rot90(a, -1), atol=1 / 65535)
    assert "EXIF orientation applied" in info["converted"]
    assert restore(path, "-o", tmp_path / "out", "--pipeline", tiny_pipeline) == 0
    out = tmp_path / "out" / "deep.png"
    arr = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.shape == (30, 20, 3)
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == ICC
        exif = im.getexif()
        assert exif[0x010F] == "TestCam" and exif.get(0x0112, 1) == 1  # kept; orientation is in the pixels now


def test_16_bit_tiff_with_orientation_tag_keeps_16_bits(tiny_pipeline, tmp_path, capsys):
    a = ramp(20, 30)
    u16 = np.round(a * 65535).astype(np.uint16)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, u16, photometric="rgb", iccprofile=ICC, extratags=[(274, "H", 1, 8, True)])
    t, info = read_image(path)
    assert info["bit_depth"] == 16 and info["size"] == (20, 30)
    np.testing.assert_array_equal(np.round(t.permute(1, 2, 0).numpy() * 65535).astype(np.uint16), np.rot90(u16, 1))
    assert restore(path, "-o", tmp_path / "out", "--pipeline", tiny_pipeline) == 0
    assert "TIFF orientation applied" in line_of(capsys.readouterr().out, "deep.tif")
    with tifffile.TiffFile(tmp_path / "out" / "deep.tif") as tf:
        page = tf.pages[0]
        assert page.dtype == np.uint16 and page.shape == (30, 20, 3)
        assert page.tags[34675].value == ICC and 274 not in page.tags


# -- frames ------------------------------------------------------------------------------------
def test_animated_gif_and_multipage_tiff_give_the_first_frame_and_say_so(tiny_pipeline, tmp_path, capsys):
    frames = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (30, 120, 220)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    stack = np.stack([np.full((16, 24, 3), v, np.uint16) for v in (1000, 30000, 60000)])
    tifffile.imwrite(tmp_path / "pages.tif", stack, photometric="rgb")
    t, info = read_image(tmp_path / "anim.gif")
    assert info["frames"] == 3 and abs(float(t.mean()) - 30 / 255) < 0.02
    t, info = read_image(tmp_path / "pages.tif")
    assert info["frames"] == 3 and info["bit_depth"] == 16 and abs(float(t.mean()) - 1000 / 65535) < 1e-6
    rc = restore(tmp_path / "anim.gif", tmp_path / "pages.tif", "-o", tmp_path / "out", "--pipeline", tiny_pipeline)
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("anim.gif", "pages.tif"):
        assert "first of 3 frames read, the other 2 left out" in line_of(out, name)
    assert (tmp_path / "out" / "anim.png").is_file()  # GIF is not writable: PNG, as before
    assert len(tifffile.TiffFile(tmp_path / "out" / "pages.tif").pages) == 1


# -- metadata ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_exif_and_icc_are_kept_in_8_bit_outputs(tiny_pipeline, tmp_path, capsys, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray((ramp(16, 24) * 255).astype(np.uint8)).save(path, exif=exif_bytes(3), icc_profile=ICC)
    assert restore(path, "-o", tmp_path / "out", "--pipeline", tiny_pipeline) == 0
    assert "not kept" not in capsys.readouterr().out
    with Image.open(tmp_path / "out" / path.name) as im:
        assert im.info.get("icc_profile") == ICC
        exif = im.getexif()
        assert exif.get(0x010F) == "TestCam" and exif.get(0x0112, 1) == 1


def test_dropped_metadata_is_named():
    info = {"exif": exif_bytes(), "icc_profile": ICC}
    assert dropped_metadata("x.bmp", 8, info) == ["EXIF", "ICC profile"]
    assert dropped_metadata("x.tif", 16, info) == ["EXIF"]
    assert dropped_metadata("x.png", 16, info) == []
    assert dropped_metadata("x.bmp", 8, {"exif": None, "icc_profile": None}) == []


# -- pixel limit -------------------------------------------------------------------------------
def declared_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height RGB pixels; its data holds one row (Pillow
    fills the rest), so a refusal that names the size comes from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width)))
                     + chunk(b"IEND", b""))
    return path


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    big = declared_png(tmp_path / "big.png", 12000, 12000)  # under Pillow's own bomb limit
    with pytest.raises(PixelLimitError, match=r"12000x12000 pixels \(144\.0 MP\) is over vlir's pixel limit "
                                              r"of 16,777,216 .*--max-pixels"):
        read_image(big)
    with pytest.raises(PixelLimitError, match="134,217,728"):
        read_image(big, max_pixels=images.TILED_MAX_PIXELS)
    t, _ = read_image(declared_png(tmp_path / "small.png", 300, 200), max_pixels=0)  # no limit: decoded
    assert t.shape == (3, 200, 300)
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((40, 50), np.uint16))
    with pytest.raises(PixelLimitError, match="50x40"):
        read_image(tmp_path / "deep.tif", max_pixels=1999)
    old = images._limit
    try:
        images.set_max_pixels(100)
        with pytest.raises(PixelLimitError, match="limit of 100 "):
            read_image(tmp_path / "deep.tif")
    finally:
        images.set_max_pixels(old)


def test_restore_and_classify_refuse_over_the_limit(tiny_pipeline, tmp_path, capsys):
    mid = declared_png(tmp_path / "mid.png", 5000, 5000)  # 25 MP: over the whole-image limit, under the tiled one
    Image.fromarray((ramp(16, 16) * 255).astype(np.uint8)).save(tmp_path / "ok.png")
    rc = restore(mid, tmp_path / "ok.png", "-o", tmp_path / "out", "--pipeline", tiny_pipeline)
    err = capsys.readouterr().err
    assert rc == 1 and "restored 1 of 2" in err
    line = line_of(err, "mid.png")
    assert "5000x5000" in line and "--max-pixels" in line and "--tile 512" in line
    assert (tmp_path / "out" / "ok.png").is_file() and not (tmp_path / "out" / "mid.png").exists()
    # --max-pixels lowers it for everything
    rc = restore(tmp_path / "ok.png", "-o", tmp_path / "out2", "--max-pixels", "100", "--pipeline", tiny_pipeline)
    assert rc == 1 and "16x16 pixels" in capsys.readouterr().err
    rc = main(["classify", "--no-progress", "--max-pixels", "1e2", str(tmp_path / "ok.png"), "--pipeline",
               str(tiny_pipeline)])
    assert rc == 1 and "limit of 100 " in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        restore(tmp_path / "ok.png", "-o", tmp_path / "out3", "--max-pixels", "-5")
    assert e.value.code == 2 and "--max-pixels" in capsys.readouterr().err
