"""Tests for prune_viz.io: every zoo case, the decompression-bomb guard, and property tests.

The zoo files are generated into pytest's tmp folder (see tests/zoo.py); nothing binary is
committed. Property tests check the boundary promise: whatever the bytes, ``load_image``
returns a valid LoadedImage or raises InputError, never another exception.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from prune_viz.io import guards, tiff
from prune_viz.io import InputError, LoadedImage, describe_bands, load_image, load_mask, stretch_to_uint8

try:  # works whether or not tests/ becomes a package
    from tests import zoo
except ImportError:
    import zoo

IMAGE_CASES = [n for n in zoo.ZOO if not n.startswith("mask_")]
MASK_CASES = [n for n in zoo.ZOO if n.startswith("mask_")]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All zoo files, written once per module: case name -> path."""
    folder = tmp_path_factory.mktemp("zoo")
    return {name: writer(folder) for name, writer in zoo.ZOO.items()}


def _path(zoo_dir: dict[str, Path], name: str) -> Path:
    return zoo_dir[name]


def _assert_valid(result: LoadedImage) -> None:
    assert isinstance(result, LoadedImage)
    assert result.rgb.dtype == np.uint8
    assert result.rgb.ndim == 3 and result.rgb.shape[2] == 3
    assert result.rgb.shape[0] >= 1 and result.rgb.shape[1] >= 1
    assert result.rgb.shape[0] * result.rgb.shape[1] <= guards.MAX_PIXELS
    assert all(isinstance(n, str) and n for n in result.notices)
    assert result.bands >= 1


# --------------------------------------------------------------------------- the zoo, case by case


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_zoo_image_case(zoo_dir: dict[str, Path], name: str) -> None:
    path = _path(zoo_dir, name)
    keyword = zoo.KEYWORD[name]
    if zoo.EXPECT[name] == "ok":
        result = load_image(path)
        _assert_valid(result)
        if keyword:
            assert any(keyword in n for n in result.notices), result.notices
        # The band chooser must offer exactly the bands load_image can use.
        assert describe_bands(path) == (result.bands, result.source_dtype)
    else:
        with pytest.raises(InputError) as err:
            load_image(path)
        assert keyword in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", MASK_CASES)
def test_zoo_mask_case(zoo_dir: dict[str, Path], name: str) -> None:
    path = _path(zoo_dir, name)
    args = zoo.MASK_ARGS[name]
    keyword = zoo.KEYWORD[name]
    if zoo.EXPECT[name] == "ok":
        ids, notices = load_mask(path, **args)
        assert ids.dtype == np.int32 and ids.shape == args["shape"]
        if keyword:
            assert any(keyword in n for n in notices), notices
    else:
        with pytest.raises(InputError) as err:
            load_mask(path, **args)
        assert keyword in str(err.value)


def test_bytes_and_path_give_the_same_result(zoo_dir: dict[str, Path]) -> None:
    path = _path(zoo_dir, "tiff4_u16_first")
    from_path, from_bytes = load_image(path), load_image(path.read_bytes())
    assert np.array_equal(from_path.rgb, from_bytes.rgb)
    assert from_path.notices == from_bytes.notices


# --------------------------------------------------------------------------- what the pixels look like


def test_rgba_keeps_stored_colours(zoo_dir: dict[str, Path]) -> None:
    result = load_image(_path(zoo_dir, "png_rgba"))
    assert result.source_shape == (32, 32, 4)
    assert (result.rgb == (0, 200, 0)).all()  # transparent half keeps its stored colour too


def test_gray_alpha_and_palette(zoo_dir: dict[str, Path]) -> None:
    gray = load_image(_path(zoo_dir, "png_gray_alpha")).rgb
    assert (gray == 90).all()
    pal = load_image(_path(zoo_dir, "png_palette")).rgb
    assert tuple(pal[0, 0]) == (255, 128, 0) and tuple(pal[0, -1]) == (0, 128, 128)


def test_16bit_gray_is_stretched_not_truncated(zoo_dir: dict[str, Path]) -> None:
    result = load_image(_path(zoo_dir, "png16_gray"))
    assert result.source_dtype == "uint16" and result.source_shape == (40, 50)
    assert "16-bit: stretched (2-98th percentile)" in result.notices
    band = result.rgb[..., 0]
    assert band.min() == 0 and band.max() == 255
    assert (result.rgb[..., 0] == result.rgb[..., 2]).all()


def test_16bit_rgb_keeps_all_16_bits(zoo_dir: dict[str, Path]) -> None:
    """Pillow alone reads only the high byte (values <= 15 here): we must see full contrast."""
    rgb = load_image(_path(zoo_dir, "png16_rgb")).rgb.astype(int)
    assert rgb[..., 0].max() == 255 and rgb[..., 1].max() == 255
    assert rgb[-1, 0, 0] > rgb[0, 0, 0]  # red grows downwards
    assert rgb[0, -1, 1] > rgb[0, 0, 1]  # green grows rightwards
    assert rgb[0, -1, 2] < rgb[0, 0, 2]  # blue shrinks rightwards


def test_cmyk_jpeg_colours(zoo_dir: dict[str, Path]) -> None:
    rgb = load_image(_path(zoo_dir, "jpeg_cmyk")).rgb.astype(int)
    for i, (_, expected) in enumerate(zoo.CMYK_PATCHES):
        centre = rgb[8, 16 * i + 8]
        assert np.abs(centre - np.array(expected)).max() <= 12, (i, centre, expected)


def test_animated_gif_gives_first_frame(zoo_dir: dict[str, Path]) -> None:
    result = load_image(_path(zoo_dir, "gif_animated"))
    assert "animated GIF: first frame" in result.notices
    assert (result.rgb == zoo.GIF_FRAME_COLOURS[0]).all()


def test_exif_orientation_is_applied(zoo_dir: dict[str, Path]) -> None:
    rgb = load_image(_path(zoo_dir, "jpeg_exif_rotated")).rgb.astype(int)
    assert rgb.shape == (32, 16, 3)
    assert rgb[4, 8, 0] > 200 and rgb[4, 8, 2] < 50  # red on top
    assert rgb[-4, 8, 2] > 200 and rgb[-4, 8, 0] < 50  # blue below


@pytest.mark.parametrize("name", ["tiff4_u16_last", "tiff4_u16_first", "tiff4_u16_pages", "tiff4_u16_unlabelled"])
def test_four_band_tiff_layouts_read_the_same(zoo_dir: dict[str, Path], name: str) -> None:
    result = load_image(_path(zoo_dir, name))
    assert result.source_shape == (40, 60, 4) and result.bands == 4 and result.source_dtype == "uint16"
    assert "4 bands: using bands 1,2,3" in result.notices
    expected = stretch_to_uint8(zoo.four_band_u16()[..., :3], 2.0, 98.0)
    assert np.array_equal(result.rgb, expected)
    swapped = load_image(_path(zoo_dir, name), bands=(4, 3, 2)).rgb.astype(int)
    assert swapped[0, 0, 0] > swapped[-1, 0, 0]  # band 4 shrinks downwards
    assert swapped[0, 0, 1] > swapped[0, -1, 1]  # band 3 shrinks rightwards
    assert not any("bands: using" in n for n in load_image(_path(zoo_dir, name), bands=(1, 2, 3)).notices)


def test_band_choice_is_validated(zoo_dir: dict[str, Path]) -> None:
    path = _path(zoo_dir, "tiff4_u16_last")
    with pytest.raises(InputError, match="band 5 requested but the image has 4 bands"):
        load_image(path, bands=(1, 2, 5))
    with pytest.raises(InputError, match="numbered from 1"):
        load_image(path, bands=(0, 1, 2))
    with pytest.raises(InputError, match="exactly 3"):
        load_image(path, bands=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="has 1 band$"):
        load_image(_path(zoo_dir, "tiff_i16"), bands=(1, 1, 2))
    gray = load_image(_path(zoo_dir, "tiff_i16"), bands=(1, 1, 1))
    assert (gray.rgb[..., 0] == gray.rgb[..., 1]).all()


def test_float_nan_inf_shown_black(zoo_dir: dict[str, Path]) -> None:
    result = load_image(_path(zoo_dir, "tiff_f32_nan"))
    assert result.rgb[0, 0, 0] == 0 and result.rgb[5, 5, 0] == 0
    assert result.rgb[-1, -1, 0] == 255
    assert any("NaN" in n for n in result.notices)


def test_constant_image_does_not_divide_by_zero(zoo_dir: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (0/0) would fail here
        result = load_image(_path(zoo_dir, "tiff_constant_u16"))
    assert (result.rgb == 0).all()


def test_nodata_is_kept_out_of_the_stretch(zoo_dir: dict[str, Path]) -> None:
    rgb = load_image(_path(zoo_dir, "tiff_nodata")).rgb[..., 0]
    assert (rgb[:10] == 0).all()
    inner = rgb[10:30, 10:30]
    assert inner.max() == 255 and inner.min() == 0  # without the tag it would all be ~255


def test_palette_and_lzw_tiff(zoo_dir: dict[str, Path]) -> None:
    pal = load_image(_path(zoo_dir, "tiff_palette")).rgb
    assert tuple(pal[0, 0]) == (255, 0, 0) and tuple(pal[0, -1]) == (0, 255, 0)
    lzw = load_image(_path(zoo_dir, "tiff_lzw_rgb")).rgb
    assert np.array_equal(lzw, zoo._noise((16, 20, 3), 7))


def test_tiny_and_elongated_images(zoo_dir: dict[str, Path]) -> None:
    one = load_image(_path(zoo_dir, "png_1x1"))
    assert one.rgb.shape == (1, 1, 3) and tuple(one.rgb[0, 0]) == (10, 20, 30)
    assert "very small image (1x1): results will be meaningless" in one.notices
    strip = load_image(_path(zoo_dir, "png_9000x50"))
    assert strip.rgb.shape == (50, 9000, 3)  # 450 k pixels: under MAX_PIXELS, kept whole
    assert any("9000x50" in n for n in strip.notices)


def test_large_images_are_downscaled(zoo_dir: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards, "MAX_PIXELS", 9000)  # 9000x50 is then 50 times too big
    strip = load_image(_path(zoo_dir, "png_9000x50"))
    h, w = strip.rgb.shape[:2]
    assert h * w <= 9000 and abs(w / h - 180) < 20
    assert strip.source_shape == (50, 9000, 3)
    assert any(n.startswith("downscaled from 9000x50 to ") for n in strip.notices)
    # JPEG decodes at reduced scale (draft mode), then lands on the exact target size.
    jpeg = Image.fromarray(zoo._noise((400, 300, 3), 9))
    buf = io.BytesIO()
    jpeg.save(buf, "JPEG")
    small = load_image(buf.getvalue())
    assert small.rgb.shape[0] * small.rgb.shape[1] <= 9000
    assert small.rgb.shape[:2] == guards._downscaled_size(300, 400)[::-1]
    assert "downscaled from 300x400" in " ".join(small.notices)
    # 16-bit data take the other road (stretch at full size, then resize): same contract.
    gray = load_image(_path(zoo_dir, "png16_gray"))
    assert gray.rgb.shape[:2] == (40, 50)
    monkeypatch.setattr(guards, "MAX_PIXELS", 500)
    gray = load_image(_path(zoo_dir, "png16_gray"))
    assert gray.rgb.shape[:2] == guards._downscaled_size(50, 40)[::-1]
    assert gray.source_shape == (40, 50) and "downscaled from 50x40" in " ".join(gray.notices)


def test_file_size_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(guards, "MAX_FILE_BYTES", 100)
    data = zoo.png_bytes(zoo._noise((32, 32, 3)))
    with pytest.raises(InputError, match="too large"):
        load_image(data)
    with pytest.raises(InputError, match="the file is empty"):
        load_image(b"")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


def test_wrong_argument_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


def test_stretch_percentiles_are_validated(zoo_dir: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="0 <= low < high <= 100"):
        load_image(_path(zoo_dir, "png16_gray"), stretch=(98.0, 2.0))
    full = load_image(_path(zoo_dir, "png16_gray"), stretch=(0.0, 100.0))
    assert "16-bit: stretched (0-100th percentile)" in full.notices


def test_pillow_globals_untouched(zoo_dir: dict[str, Path]) -> None:
    before = Image.MAX_IMAGE_PIXELS
    for name in IMAGE_CASES:
        try:
            load_image(_path(zoo_dir, name))
        except InputError:
            pass
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == before


# --------------------------------------------------------------------------- decompression bombs


@pytest.mark.parametrize("name", ["png_bomb_header", "tiff_bomb_header"])
def test_bomb_header_refused_fast_without_decoding(
    zoo_dir: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _path(zoo_dir, name)
    assert path.stat().st_size < 1000
    decoded: list[str] = []

    def spy(label: str, original):  # record any attempt to decode pixels
        def wrapper(self, *args, **kwargs):
            decoded.append(label)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy("pillow", ImageFile.ImageFile.load))
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", spy("tifffile", tifffile.TiffPageSeries.asarray))
    monkeypatch.setattr(tifffile.TiffPage, "asarray", spy("tifffile page", tifffile.TiffPage.asarray))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InputError) as err:
            load_image(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "40000x40000" in message and "limit" in message and "20000x20000" in message
    assert elapsed < 2.0
    assert peak < 50 * 2**20
    assert decoded == []
    with pytest.raises(InputError, match="40000x40000"):
        describe_bands(path)


# --------------------------------------------------------------------------- masks


def test_mask_ids(zoo_dir: dict[str, Path]) -> None:
    labels = zoo._labels().astype(np.int32)
    ids, notices = load_mask(_path(zoo_dir, "mask_labels_ok"), **zoo.MASK_ARGS["mask_labels_ok"])
    assert np.array_equal(ids, labels) and notices == []
    ids, _ = load_mask(_path(zoo_dir, "mask_palette_png"), **zoo.MASK_ARGS["mask_palette_png"])
    assert np.array_equal(ids, labels)  # indices, not colours
    ids, _ = load_mask(_path(zoo_dir, "mask_rgb_ok"), **zoo.MASK_ARGS["mask_rgb_ok"])
    assert np.array_equal(ids, np.where(labels == 255, 0, labels))
    ids, notices = load_mask(_path(zoo_dir, "mask_same_aspect"), **zoo.MASK_ARGS["mask_same_aspect"])
    assert np.array_equal(ids, labels)  # 2x upsampled then nearest-downsampled: exact
    assert "mask resized from 128x96 to 64x48 (nearest neighbour)" in notices


def test_mask_messages(zoo_dir: dict[str, Path]) -> None:
    with pytest.raises(InputError) as err:
        load_mask(_path(zoo_dir, "mask_wrong_size"), **zoo.MASK_ARGS["mask_wrong_size"])
    assert "50x50" in str(err.value) and "64x48" in str(err.value)
    with pytest.raises(InputError) as err:
        load_mask(_path(zoo_dir, "mask_unknown_labels"), **zoo.MASK_ARGS["mask_unknown_labels"])
    assert "7, 9" in str(err.value) and "0..3" in str(err.value)
    with pytest.raises(InputError, match="no colour palette"):
        load_mask(_path(zoo_dir, "mask_rgb_ok"), shape=zoo.MASK_SHAPE, num_classes=4)
    with pytest.raises(InputError, match="^mask: the image file is truncated"):
        load_mask(_path(zoo_dir, "png_truncated"), shape=(64, 64), num_classes=4)
    with pytest.raises(InputError, match="^mask: the file is empty"):
        load_mask(b"", shape=(64, 64), num_classes=4)


def test_mask_lists_at_most_three_colours() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, :5] = [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (13, 14, 15)]
    with pytest.raises(InputError) as err:
        load_mask(zoo.png_bytes(rgb), shape=(8, 8), num_classes=4, palette=zoo.PALETTE)
    message = str(err.value)
    assert "5 colours" in message and message.count("(") == 3


def test_binary_0_255_mask_gets_a_notice() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    ids, notices = load_mask(zoo.png_bytes(mask), shape=(8, 8), num_classes=2)
    assert set(np.unique(ids)) == {0, 255}
    assert any("0 and 255" in n for n in notices)


def test_mask_from_float_and_signed_tiff() -> None:
    good = np.array([[0.0, 1.0], [2.0, 255.0]], np.float32)
    ids, _ = load_mask(zoo.tiff_bytes(good), shape=(2, 2), num_classes=3)
    assert ids.tolist() == [[0, 1], [2, 255]]
    with pytest.raises(InputError, match="non-integer"):
        load_mask(zoo.tiff_bytes(good + 0.5), shape=(2, 2), num_classes=3)
    with pytest.raises(InputError, match="-1"):
        load_mask(zoo.tiff_bytes(np.array([[0, -1]], np.int16)), shape=(1, 2), num_classes=3)


# --------------------------------------------------------------------------- stretch and layout units


def test_stretch_to_uint8_basics() -> None:
    ramp = np.arange(101, dtype=np.float32).reshape(1, 101)
    out = stretch_to_uint8(ramp, 0.0, 100.0)
    assert out[0, 0] == 0 and out[0, -1] == 255 and out.dtype == np.uint8
    assert (stretch_to_uint8(np.full((3, 3), np.nan), 2, 98) == 0).all()
    assert (stretch_to_uint8(np.full((3, 3, 2), 7, np.uint16), 2, 98) == 0).all()
    mostly_zero = np.zeros((10, 10), np.uint16)
    mostly_zero[0, 0] = 500  # percentiles coincide: fall back to min..max instead of a blank image
    assert stretch_to_uint8(mostly_zero, 2, 98)[0, 0] == 255
    with pytest.raises(InputError):
        stretch_to_uint8(np.zeros((2, 2), np.complex64), 2, 98)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((4, 40, 60), (1, 2, 0)),  # bands first
        ((40, 60, 4), (0, 1, 2)),  # band last (pages of W x bands)
        ((3, 3, 3), (1, 2, 0)),  # ambiguous: read as stored, pages = bands
        ((200, 40, 60), None),  # a long stack of pages: the first is used
    ],
)
def test_guess_band_order(shape: tuple[int, int, int], expected: tuple[int, int, int] | None) -> None:
    assert tiff._guess_band_order(list(shape)) == expected


def test_tiff_extra_dimensions_use_the_first_plane() -> None:
    stack = np.zeros((3, 10, 12, 3), np.uint8)
    stack[0] = 200
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, photometric="rgb")
    result = load_image(buf.getvalue())
    assert result.rgb.shape == (10, 12, 3) and (result.rgb == 200).all()
    assert any("using the first" in n for n in result.notices)


# --------------------------------------------------------------------------- property tests

_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"GIF89a", b"BM",
           b"RIFF\x00\x00\x00\x00WEBP"]


def _check_boundary(data: bytes) -> None:
    """The promise: a valid LoadedImage, or an InputError with a one-line message."""
    try:
        result = load_image(data)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _assert_valid(result)


@pytest.mark.filterwarnings("ignore")  # decoders warn about the junk they are fed; only raising matters
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048), st.tuples(st.sampled_from(_MAGICS), st.binary(max_size=2048)).map(b"".join)))
def test_random_bytes_never_escape_the_boundary(data: bytes) -> None:
    _check_boundary(data)


def _seed_files() -> list[bytes]:
    """Small valid files of every format, to mutate."""
    noise = zoo._noise((12, 10, 3), 11)
    out = [zoo.png_bytes(noise), zoo.png_bytes(noise.astype(np.uint16) * 200),
           zoo.tiff_bytes(np.dstack([noise, noise[..., :1]]).astype(np.uint16), "first"),
           zoo.tiff_bytes(noise.astype(np.float32), "last")]
    for fmt in ("JPEG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, fmt)
        out.append(buf.getvalue())
    with tempfile.TemporaryDirectory() as folder:  # the zoo's odd layouts reach other code paths
        for name in ("tiff_lzw_rgb", "tiff_palette", "tiff4_u16_pages", "tiff_nodata", "jpeg_cmyk",
                     "jpeg_exif_rotated", "gif_animated", "png16_rgb", "png_palette", "tiff_rgba_u8"):
            out.append(zoo.ZOO[name](Path(folder)).read_bytes())
    return out


_SEEDS = _seed_files()


@pytest.mark.filterwarnings("ignore")  # decoders warn about the junk they are fed; only raising matters
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, len(_SEEDS) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_files_never_escape_the_boundary(seed: int, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check_boundary(bytes(data))


@st.composite
def _images(draw: st.DrawFn) -> tuple[np.ndarray, str, str]:
    """(array H x W[, B], format, TIFF layout) of a valid image, 1..64 px a side."""
    h, w = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    bands = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    fmt = "TIFF" if dtype == "float32" else draw(st.sampled_from(["PNG", "TIFF"]))
    layout = draw(st.sampled_from(["last", "first"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == "float32":
        arr = rng.normal(size=(h, w, bands)).astype(np.float32)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, (h, w, bands), endpoint=True).astype(dtype)
    return (arr[..., 0] if bands == 1 else arr), fmt, layout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_images())
def test_valid_images_keep_their_size(case: tuple[np.ndarray, str, str]) -> None:
    arr, fmt, layout = case
    data = zoo.png_bytes(arr) if fmt == "PNG" else zoo.tiff_bytes(arr, layout)
    result = load_image(data)
    _assert_valid(result)
    assert result.rgb.shape[:2] == arr.shape[:2]
    assert result.source_shape[:2] == arr.shape[:2]
    assert result.source_dtype == arr.dtype.name
    if arr.dtype == np.uint8:  # 8-bit data is shown exactly as stored
        expected = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
        assert np.array_equal(result.rgb, expected)
    bands = 1 if arr.ndim == 2 else arr.shape[2]
    is_png_alpha = fmt == "PNG" and bands == 4
    assert result.bands == (3 if is_png_alpha else bands)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=False, width=32), min_size=1, max_size=200),
    st.floats(0, 49), st.floats(51, 100),
)
def test_stretch_is_monotonic(values: list[float], lo: float, hi: float) -> None:
    a = np.array(values, np.float32).reshape(1, -1)
    out = stretch_to_uint8(a, lo, hi)[0].astype(int)
    finite = np.isfinite(a[0])
    order = np.argsort(a[0][finite], kind="stable")
    assert (np.diff(out[finite][order]) >= 0).all()
    assert (out[~finite] == 0).all()
    assert not math.isnan(out.sum())


def test_lzw_multiband_geotiff_loads(tmp_path):
    """GDAL writes LZW by default; with imagecodecs (in requirements.txt) tifffile decodes it."""
    pytest.importorskip("imagecodecs")
    bands = (np.random.default_rng(3).random((40, 50, 5)) * 4000).astype(np.uint16)
    path = tmp_path / "lzw5.tif"
    tifffile.imwrite(path, bands, compression="lzw", photometric="minisblack", planarconfig="contig")
    loaded = load_image(path)
    assert loaded.rgb.shape == (40, 50, 3) and loaded.bands == 5
    assert any("bands 1,2,3" in n for n in loaded.notices)
