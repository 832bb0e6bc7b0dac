"""Issue #13: small, fast versions of the hostile inputs that once hurt the server or the CLI."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

from prune_viz.checkpoints import CheckpointError, load_state_dict, sniff_checkpoint
from prune_viz.errors import ECHO_LIMIT, ParamError, UserError, echo, internal_error_message


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_format_comes_from_the_bytes_not_the_name(tmp_path):
    state = {"w": torch.arange(4.0)}
    save_file(state, str(tmp_path / "looks_like_torch.pth"))
    torch.save(state, tmp_path / "looks_like_safetensors.safetensors")
    for name in ("looks_like_torch.pth", "looks_like_safetensors.safetensors"):
        assert torch.equal(load_state_dict(tmp_path / name)["w"], state["w"])


def test_sniff_checkpoint_kinds(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "a.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    save_file({"w": torch.ones(1)}, str(tmp_path / "c.bin"))
    kinds = [sniff_checkpoint((tmp_path / n).read_bytes()[:16], (tmp_path / n).stat().st_size) for n in ("a.pt", "b.pt", "c.bin")]
    assert kinds == ["torch-zip", "torch-legacy", "safetensors"]
    assert sniff_checkpoint(b"just some text here", 19) is None


class _RunsCode:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickled_code_refusal_names_the_global_and_never_advises_the_unsafe_option(tmp_path, zipfile):
    path = tmp_path / "evil.pth"
    torch.save({"w": _RunsCode()}, path, _use_new_zipfile_serialization=zipfile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of torch's may print before our one line
        with pytest.raises(CheckpointError) as info:
            load_state_dict(path)
    text = str(info.value)
    assert "weights_only" not in text and "trust" not in text
    assert "eval" in text and "never run" in text
    assert info.value.__suppress_context__  # torch's text (with its advice) is not chained into logs shown to users


def test_checkpoint_folder_and_unknown_bytes_are_named_for_what_they_are(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_state_dict(tmp_path)
    (tmp_path / "notes.pth").write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a PyTorch checkpoint"):
        load_state_dict(tmp_path / "notes.pth")


# --------------------------------------------------------------------------- messages


def test_echo_cuts_long_values():
    long = "x" * 1_000_000
    text = echo(long)
    assert len(text) <= ECHO_LIMIT + 40 and "1,000,000 characters" in text
    assert echo("rate") == "'rate'" and echo(3) == "3"


def test_internal_error_message_logs_the_traceback_and_blames_no_user(caplog):
    try:
        raise KeyError("bug")
    except KeyError as exc:
        msg = internal_error_message(exc, "a test")
    assert msg.startswith("internal error (id ") and "not of your input" in msg
    error_id = msg.split("id ")[1][:8]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_user_errors_are_value_errors():
    assert issubclass(ParamError, UserError) and issubclass(UserError, ValueError)
    from prune_viz.io import InputError

    assert issubclass(InputError, UserError) and issubclass(CheckpointError, UserError)


# --------------------------------------------------------------------------- decode budget


import threading  # noqa: E402
from pathlib import Path  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench import hostile_files  # noqa: E402
from prune_viz.io import InputError, guards, load_image  # noqa: E402
from prune_viz.io.tiff import _read_tiff_reduced  # noqa: E402


def test_a_png_over_the_decode_budget_is_refused_from_its_header(tmp_path, monkeypatch):
    path = hostile_files.rgba_png(tmp_path / "rgba.png", side=400)  # 640 KB decoded, ~2 KB stored
    monkeypatch.setattr(guards, "DECODE_BUDGET_BYTES", 512 * 1024)
    with pytest.raises(InputError, match=r"would take 1 MB of memory once decoded; the limit is 0 MB"):
        load_image(path)
    monkeypatch.setattr(guards, "DECODE_BUDGET_BYTES", 1024 * 1024)
    assert load_image(path).rgb.shape == (400, 400, 3)


def test_a_tiled_tiff_over_the_budget_is_read_at_reduced_size(tmp_path, monkeypatch):
    import tifffile

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zstd")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        from prune_viz.io.tiff import _plan_tiff

        plan = _plan_tiff(tif.series[0], page)
        reduced = _read_tiff_reduced(page, plan, 3)
    assert np.array_equal(reduced, pixels[::3, ::3])  # every 3rd pixel, tile borders included
    monkeypatch.setattr(guards, "DECODE_BUDGET_BYTES", 1_000_000)  # the full image is 1.9 MB
    monkeypatch.setattr(guards, "MAX_PIXELS", 200 * 200)
    loaded = load_image(path)
    assert any("read at 1/" in n for n in loaded.notices)
    assert loaded.rgb.shape[0] * loaded.rgb.shape[1] <= 200 * 200


def test_an_untiled_tiff_over_the_budget_is_refused(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "one_strip.tif"
    tifffile.imwrite(path, np.zeros((600, 600, 3), np.uint8), rowsperstrip=600, compression="zstd")
    monkeypatch.setattr(guards, "DECODE_BUDGET_BYTES", 500_000)
    with pytest.raises(InputError, match="once decoded"):
        load_image(path)


def test_a_large_gif_is_shrunk_as_palette_indices(tmp_path, monkeypatch):
    path = hostile_files.big_gif(tmp_path / "big.gif", side=600)
    monkeypatch.setattr(guards, "MAX_PIXELS", 100 * 100)
    loaded = load_image(path)
    assert loaded.rgb.shape[0] * loaded.rgb.shape[1] <= 100 * 100
    assert tuple(loaded.rgb[0, 0]) == (40, 90, 160)  # the palette colour, not an average


def test_large_decodes_take_turns():
    inside: list[int] = []
    overlap = []

    def decode() -> None:
        with guards.decode_slot(guards.LARGE_DECODE_BYTES + 1):
            inside.append(1)
            overlap.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=decode) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [1, 1, 1]
    with guards.decode_slot(10), guards.decode_slot(10):  # small decodes never wait
        pass


# --------------------------------------------------------------------------- parameters and time


from prune_viz.budget import RunTooLong, check_time, time_budget  # noqa: E402
from prune_viz.methods.dtop import DToPParams  # noqa: E402
from prune_viz.methods.lvtp import LVTPParams  # noqa: E402
from prune_viz.methods.matp import MATPParams  # noqa: E402


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LVTPParams(iters=20000), "iters must be <= 50"),
        (lambda: LVTPParams(k=10**26), "k must be <= 64"),
        (lambda: LVTPParams(k2=65), "k2 must be <= 64"),
        (lambda: LVTPParams(q1=1e300), "q1 must be <= 10"),
        (lambda: DToPParams(k=10**26), "k must be in [0, 4096]"),
        (lambda: MATPParams(k=5000), "k must be in [0, 4096]"),
        (lambda: MATPParams(alpha=1e9), "alpha must be <= 100"),
    ],
)
def test_work_parameters_have_upper_bounds(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_the_time_budget_stops_a_run_inside_the_engine():
    from prune_viz.backbones import build_backbone
    from prune_viz.engine import run_baseline

    backbone = build_backbone("demo")
    image = np.zeros((64, 64, 3), np.uint8)
    with time_budget(0.0), pytest.raises(RunTooLong, match="took longer than the server's limit of 0 s"):
        run_baseline(backbone, image)
    with time_budget(None):
        check_time("anywhere")  # no budget: never raises


# --------------------------------------------------------------------------- models


def test_giant_timm_models_are_refused_before_any_memory_is_spent(monkeypatch):
    from prune_viz.backbones import build_backbone, check_timm_allowed

    with pytest.raises(ParamError, match=r"vit_huge_patch14_224 has 631M parameters; .* up to 100M"):
        build_backbone("timm:vit_huge_patch14_224")
    check_timm_allowed("vit_tiny_patch16_224")  # 5.7M: fine
    monkeypatch.setenv("PRUNE_VIZ_TIMM_ALLOW", "vit_small_patch16_224")
    with pytest.raises(ParamError, match="only these timm models: vit_small_patch16_224"):
        check_timm_allowed("vit_tiny_patch16_224")


def test_reports_say_which_weights_ran():
    from prune_viz.analysis import analyze
    from prune_viz.backbones import build_backbone
    from prune_viz.params import make_plan

    backbone = build_backbone("timm:vit_tiny_patch16_224", input_size=64)
    result = analyze(backbone, np.zeros((64, 64, 3), np.uint8), make_plan(backbone, "random", "2"), repeat=0, measure=False)
    assert result.report["weights"] == "random"
    assert "RANDOM weights" in result.report["weights_note"]


# --------------------------------------------------------------------------- the CLI


from prune_viz.cli import main as cli_main  # noqa: E402

TINY = ["--backbone", "timm:vit_tiny_patch16_224", "--input-size", "64", "--repeat", "0", "--no-measure"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


def _cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli_main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input-size", "-16"], "must be from 16 to 2048"),
        (["--input-size", "0"], "must be from 16 to 2048"),
        (["--seed", str(2**63)], "must be from 0 to 4294967295"),
        (["--seed", "abc"], "expected a whole number, got 'abc'"),
        (["--layers", "x" * 5000], "at most 200 characters, got 5,000"),
        (["--method", "lvtp", "--k2", "9" * 50], "k2 must be <= 64"),
    ],
)
def test_cli_bad_numbers_are_one_line_and_exit_2(image_path, tmp_path, capsys, extra, message):
    code, err = _cli(["analyze", str(image_path), "--out", str(tmp_path / "o"), *TINY, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert len(err) < 600


def test_cli_checks_out_before_running(image_path, tmp_path, capsys, monkeypatch):
    import prune_viz.analysis as analysis

    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: pytest.fail("ran before checking --out"))
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out, message in ((a_file, "is a file"), (a_file / "x", "cannot create the folder")):
        code, err = _cli(["analyze", str(image_path), "--out", str(out), *TINY], capsys)
        assert code == 2 and message in err and "Traceback" not in err


# --------------------------------------------------------------------------- narrow exception handling


def test_our_own_bugs_in_the_loader_are_not_disguised_as_bad_files(monkeypatch):
    """A bug in our code (here: band selection) must escape as itself, not as 'could not read'."""
    import prune_viz.io as io_pkg
    from tests import zoo

    def broken(*args, **kwargs):
        raise KeyError("a bug of ours")

    monkeypatch.setattr(io_pkg, "_to_loaded", broken)
    with pytest.raises(KeyError, match="a bug of ours"):
        load_image(zoo.png_bytes(np.zeros((8, 8, 3), np.uint8)))


def test_a_decoder_failure_is_still_the_files_fault():
    from tests import zoo

    data = bytearray(zoo.png_bytes(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    data[60:80] = b"\xff" * 20  # inside the compressed pixels
    with pytest.raises(InputError, match="truncated or corrupt|could not read"):
        load_image(bytes(data))


def test_a_tiff_that_tifffile_cannot_read_says_pillow_read_it(monkeypatch):
    import prune_viz.io.tiff as tiff

    def tifffile_fails(src, for_mask):
        import tifffile

        tifffile.TiffFile(b"not a tiff at all")  # raises inside tifffile

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, "TIFF")
    monkeypatch.setattr(tiff, "_decode_tifffile", tifffile_fails)
    loaded = load_image(buf.getvalue())
    assert (loaded.rgb == 90).all()
    assert loaded.notices[0].startswith("read with Pillow, as tifffile could not")


# --------------------------------------------------------------------------- the API, in process


def _api(client, *args, api_name):
    from gradio_client import handle_file

    return client.predict(*[handle_file(str(a)) if isinstance(a, Path) else a for a in args], api_name=api_name)


@pytest.mark.parametrize(
    "seed, params, message",
    [
        ("abc", "{}", "seed must be a whole number from 0 to 4294967295, got 'abc'"),
        (2**63, "{}", "seed must be a whole number from 0 to 4294967295"),
        (0, '{"rate": ' + "[" * 3000 + "]" * 3000 + "}", "at most 2,000 characters of JSON"),
        (0, '{"rate": [[[0.5]]]}', "must be a flat JSON object"),
        (0, '{"iters": 20000}', "iters must be <= 50"),
    ],
)
def test_api_refusals_are_ours_and_short(client, scene, seed, params, message):
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    with pytest.raises(AppError) as err:
        _api(client, scene / "scene.png", "demo", "lvtp", "", params, seed, api_name="/estimate")
    assert message in str(err.value) and len(str(err.value)) < 400
    assert time.perf_counter() - t0 < 5.0  # refused before any model runs (generous: a shared CI machine)


def test_api_compare_drops_repeats_and_refuses_unknown_names_first(client, scene):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="at least two different methods"):
        _api(client, scene / "scene.png", "demo", ",".join(["random"] * 20), "", 0, 0, api_name="/compare")
    with pytest.raises(AppError, match="unknown method 'nope'"):
        _api(client, scene / "scene.png", "demo", "random,nope", "", 0, 0, api_name="/compare")
    table = _api(client, scene / "scene.png", "demo", "random,random,none", "", 0, 0, api_name="/compare")
    assert [row[0] for row in table["rows"]] == ["random", "none"]


def test_an_internal_error_is_not_the_users_fault(app_module, monkeypatch, caplog):
    """A bug below the boundary reaches the user as 'internal error (id ...)', logged with its traceback."""
    import gradio as gr

    from prune_viz.webapp import glue

    @glue.user_errors
    def handler():
        raise KeyError("a bug")

    with pytest.raises(gr.Error) as err:
        handler()
    assert "internal error (id " in err.value.message and "not of your input" in err.value.message
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_running_out_of_memory_is_not_called_a_corrupt_file(monkeypatch):
    from PIL import ImageFile

    from tests import zoo

    def no_memory(self):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    with pytest.raises(InputError, match="ran out of memory") as err:
        load_image(zoo.png_bytes(np.zeros((8, 8, 3), np.uint8)))
    assert "corrupt" not in str(err.value)
