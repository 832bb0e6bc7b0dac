"""Issue #13: small, fast versions of the hostile inputs that once hurt the server or the CLI."""

from __future__ import annotations

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
