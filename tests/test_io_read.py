"""The reader: scaling by the file's type, NaN/inf, ICC profiles, multi-frame files, limits,
and property tests (random arrays round-trip or raise ImageReadError)."""

from __future__ import annotations

import io as _io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageCms

from icc_profiles import DISPLAY_P3, matrix_profile
from imguard.io import ImageReadError, encode_image, from_tensor, read_image, read_image_bytes, save_image, to_tensor


def test_16_bit_png_is_scaled_by_65535_whatever_its_values(tmp_path):
    for top in (200, 60000):  # a dark 16-bit image must not be taken for 8-bit
        a = np.linspace(0, top, 64).reshape(8, 8).astype(np.uint16)
        Image.fromarray(a).save(tmp_path / "g16.png")
        x, _ = to_tensor(tmp_path / "g16.png")
        assert float(x.max()) == pytest.approx(top / 65535, abs=1e-6)
        assert torch.equal(x[0, 0], x[0, 2])  # grey -> RGB


def test_32_bit_tiff_by_its_declared_depth_and_8_bit_by_255(tmp_path):
    a = np.array([[0, 1_000_000], [2**31 - 1, 5]], dtype=np.int32)
    Image.fromarray(a).save(tmp_path / "i32.tif")
    x, _ = to_tensor(tmp_path / "i32.tif")
    assert float(x[0, 0, 1, 0]) == pytest.approx(1.0) and float(x[0, 0, 0, 1]) == pytest.approx(1e6 / (2**31 - 1))
    Image.fromarray(np.array([[7, 255]], np.uint8)).save(tmp_path / "l.png")
    x, _ = to_tensor(tmp_path / "l.png")
    assert float(x[0, 0, 0, 0]) == pytest.approx(7 / 255)
    with pytest.raises(ImageReadError, match="unknown bit depth"):
        to_tensor(Image.fromarray(a))  # an 'I' image that came from nowhere: not guessed
    neg = np.array([[-5, 10]], dtype=np.int32)
    Image.fromarray(neg).save(tmp_path / "neg.tif")
    with pytest.raises(ImageReadError, match="negative"):
        to_tensor(tmp_path / "neg.tif")


def test_float_tiff_as_0_1_clipped_within_tolerance_refused_beyond_and_nan(tmp_path):
    Image.fromarray(np.array([[0.25, 1.0005]], np.float32)).save(tmp_path / "f.tif")
    x, _ = to_tensor(tmp_path / "f.tif")
    assert float(x[0, 0, 0, 0]) == pytest.approx(0.25) and float(x.max()) == 1.0
    for bad, msg in ((2.0, r"\[0,1\]"), (np.nan, "NaN"), (np.inf, "NaN or infinite"), (-np.inf, "NaN or infinite")):
        Image.fromarray(np.array([[0.5, bad]], np.float32)).save(tmp_path / "bad.tif")
        with pytest.raises(ImageReadError, match=msg) as e:
            to_tensor(tmp_path / "bad.tif")
        assert "bad.tif" in str(e.value)
    for arr in (np.array([[np.nan]], np.float32), torch.full((3, 4, 4), float("nan"))):
        with pytest.raises(ImageReadError, match="NaN"):
            to_tensor(arr)


def test_multi_frame_files_are_refused_naming_the_file(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    for name, kw in (("a.gif", {}), ("a.png", {}), ("a.webp", {}), ("a.tiff", {})):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **kw)
        with pytest.raises(ImageReadError, match="only single-frame images") as e:
            read_image(tmp_path / name)
        assert name in str(e.value) and "3 frames" in str(e.value)
    frames[0].save(tmp_path / "one.gif")
    assert to_tensor(tmp_path / "one.gif")[0].shape == (1, 3, 8, 8)


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_and_decompression_bombs_are_clean_errors(tmp_path):
    (tmp_path / "big.png").write_bytes(_png_header_only(9000, 9000))  # 81 MP declared, a few bytes of data
    with pytest.raises(ImageReadError, match="81.0 megapixels") as e:
        read_image(tmp_path / "big.png")
    assert "big.png" in str(e.value) and "--max-pixels" in str(e.value)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError, match="too many pixels") as e:  # no imguard limit: Pillow's bomb check holds
        read_image(tmp_path / "bomb.png", max_pixels=None)
    assert "bomb.png" in str(e.value)
    (tmp_path / "tall.png").write_bytes(_png_header_only(200, 600_000))  # 120 MP: above Pillow's own limit
    with pytest.raises(ImageReadError, match="truncated"):  # a limit raised past Pillow's is honoured: decoded, and
        read_image(tmp_path / "tall.png", max_pixels=200_000_000)  # this file's data is missing
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    with pytest.raises(ImageReadError, match="1200"):
        read_image(tmp_path / "ok.png", max_pixels=1000)
    assert read_image(tmp_path / "ok.png", max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageReadError, match="megapixels"):
        to_tensor(np.zeros((40, 30, 3), np.uint8), max_pixels=100)


@pytest.mark.parametrize("colorants,label", [(None, "Adobe RGB-like"), (DISPLAY_P3, "Display P3-like")])
def test_icc_input_is_converted_to_srgb_and_the_on_screen_change_stays_in_budget(tmp_path, tiny_protector, colorants, label):
    icc = matrix_profile(f"{label} test profile", colorants) if colorants else matrix_profile(f"{label} test profile")
    arr = np.random.default_rng(0).integers(30, 200, (40, 48, 3), dtype=np.uint8)
    arr[:10, :, 1] = 220  # saturated greens, where wide gamut differs most from sRGB
    arr[:10, :, 0] = 40
    Image.fromarray(arr).save(tmp_path / "wide.png", icc_profile=icc)
    srgb = ImageCms.createProfile("sRGB")
    with Image.open(tmp_path / "wide.png") as im:
        on_screen_in = np.asarray(ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(_io.BytesIO(icc)), srgb,
                                                            outputMode="RGB")).astype(int)
    eps = 4
    out = tiny_protector.protect(read_image(tmp_path / "wide.png"), method="encoder", eps=eps, steps=2, seed=0)
    assert out.info.get("icc_profile"), "the output must be tagged sRGB"
    p = save_image(out, tmp_path / "out.png")
    with Image.open(p) as saved:
        tag = ImageCms.ImageCmsProfile(_io.BytesIO(saved.info["icc_profile"]))
        assert "srgb" in ImageCms.getProfileDescription(tag).lower()
        on_screen_out = np.asarray(ImageCms.profileToProfile(saved, tag, srgb, outputMode="RGB")).astype(int)
    change = np.abs(on_screen_out - on_screen_in).max()
    assert 1 <= change <= eps + 1  # +1: the sRGB->sRGB display transform's own rounding
    ignoring_the_profile = np.abs(arr.astype(int) - on_screen_in).max()
    assert ignoring_the_profile > 3 * eps  # the test would catch a reader that drops the profile


def test_broken_icc_profile_is_a_clean_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png", icc_profile=b"not a profile at all" * 8)
    with pytest.raises(ImageReadError, match="ICC"):
        read_image(tmp_path / "b.png")


def test_srgb_tagged_input_is_not_converted(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    arr = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png", icc_profile=srgb)
    x, info = to_tensor(tmp_path / "s.png")
    assert not info.srgb_tagged and np.array_equal(np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), arr)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=ex.tobytes())
    assert to_tensor(tmp_path / "r.jpg")[0].shape == (1, 3, 20, 10)


def test_bytes_are_read_as_their_file_is(tmp_path):
    """read_image_bytes: the same pixels, orientation and sRGB conversion as read_image of the
    file; errors name the label, without a memory address. encode_image: save_image's bytes."""
    src = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    src.save(tmp_path / "r.png", exif=exif.tobytes(), icc_profile=matrix_profile("P3", DISPLAY_P3))
    a, b = read_image(tmp_path / "r.png"), read_image_bytes((tmp_path / "r.png").read_bytes(), "upload 3")
    assert b.size == a.size == (6, 10) and np.array_equal(np.asarray(a), np.asarray(b))
    assert b.info["imguard_srgb"] is True and a.info["imguard_srgb"] is True
    with pytest.raises(ImageReadError, match=r"^cannot read image upload 3: not a readable image file") as e:
        read_image_bytes(b"nope", "upload 3")
    assert "0x" not in str(e.value)
    with pytest.raises(ImageReadError, match="<bytes>: it is empty"):
        read_image_bytes(b"")
    save_image(a, tmp_path / "out.png")
    assert encode_image(a) == (tmp_path / "out.png").read_bytes()


def test_empty_inputs_are_refused():
    for bad in (np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.float32), torch.zeros(3, 0, 4), torch.zeros(0, 3, 4, 4)):
        with pytest.raises(ImageReadError, match="empty"):
            to_tensor(bad)


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.float16, np.int32, np.int8, np.bool_, np.complex64])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dtype=_DTYPES, ndim=st.integers(1, 4))
def test_random_arrays_round_trip_or_raise_image_read_error(data, dtype, ndim):
    shape = data.draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=0, max_side=6))
    arr = data.draw(hnp.arrays(dtype, shape))
    try:
        x, info = to_tensor(arr)
    except ImageReadError:
        return
    assert arr.ndim in (2, 3) and arr.size > 0
    assert x.shape == (1, 3, arr.shape[0], arr.shape[1]) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1
    q = torch.round(x * 255) / 255
    back = from_tensor(q, info)
    if arr.ndim == 2:  # greyscale comes back as RGB
        assert back.shape == arr.shape + (3,)
        back = back[..., 0]
    assert back.shape == arr.shape and back.dtype == arr.dtype
    if arr.dtype == np.uint8:
        assert np.array_equal(back, arr)
    elif arr.dtype == np.uint16:
        assert np.abs(back.astype(int) - arr.astype(int)).max() <= 65535 / 255 / 2 + 1
    elif np.issubdtype(arr.dtype, np.floating):
        assert np.abs(back.astype(np.float64) - np.clip(arr.astype(np.float64), 0, 1)).max() <= 0.5 / 255 + 2e-3


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([3, 4]), seed=st.integers(0, 2**16))
def test_random_uint8_images_through_a_png_file_are_exact(tmp_path_factory, h, w, c, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    p = tmp_path_factory.mktemp("rt") / "a.png"
    Image.fromarray(arr).save(p)
    x, info = to_tensor(p)
    img = from_tensor(x, info)
    assert np.array_equal(np.asarray(img), arr)


@pytest.mark.parametrize("ext", ["heic", "avif"])
def test_heic_and_avif_with_the_heif_extra(tmp_path, ext):
    pytest.importorskip("pillow_heif")
    from imguard.io import HEIF_AVAILABLE

    assert HEIF_AVAILABLE
    yy, xx = np.mgrid[0:16, 0:24]
    arr = np.stack([xx * 10, yy * 15, 255 - xx * 10], axis=2).astype(np.uint8)  # smooth: lossy codecs keep it
    try:
        Image.fromarray(arr).save(tmp_path / f"a.{ext}", quality=95)
    except (OSError, KeyError, ValueError) as e:  # pragma: no cover - a build without that encoder
        pytest.skip(f"pillow-heif cannot write {ext} here: {e}")
    x, _ = to_tensor(tmp_path / f"a.{ext}")
    assert x.shape == (1, 3, 16, 24)
    assert np.abs(np.round(x[0].permute(1, 2, 0).numpy() * 255) - arr).mean() < 8  # lossy, but close
