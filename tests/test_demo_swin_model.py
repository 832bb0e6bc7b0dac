"""The Swin-UNet demo model: shapes, layer numbering, size budget, checkpoint round trips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from prune_viz.backbones.demo_swin_model import (
    CLASS_NAMES,
    PALETTE,
    SwinDemoConfig,
    SwinUNet,
    build_demo_swin,
    save_demo_swin,
)
from prune_viz.checkpoints import CheckpointError

MAX_BYTES = 15 * 1024 * 1024


@pytest.fixture(scope="module")
def model() -> SwinUNet:
    torch.manual_seed(0)
    return SwinUNet().eval()


def test_config_numbering_and_grids():
    cfg = SwinDemoConfig()
    assert cfg.stage_ends == (2, 4, 8, 10)  # stage 2 ends at layer 4
    assert [cfg.stage_of(layer) for layer in range(1, 11)] == [1, 1, 2, 2, 3, 3, 3, 3, 4, 4]
    assert cfg.stage_grids() == (64, 32, 16, 8)
    assert all(g % cfg.window_size == 0 for g in cfg.stage_grids())
    assert cfg.classes == CLASS_NAMES and cfg.palette == PALETTE and len(PALETTE) == len(CLASS_NAMES)
    with pytest.raises(ValueError, match="multiple of window"):
        SwinDemoConfig(window_size=7).validate()
    with pytest.raises(ValueError, match="beyond the last layer"):
        SwinDemoConfig(aux_layers=(11,)).validate()


def test_structure_matches_the_contract(model):
    from timm.models.swin_transformer import SwinTransformer

    assert isinstance(model.encoder, SwinTransformer)
    assert [layer for layer, _, _ in model.blocks()] == list(range(1, 11))
    assert [s for _, s, _ in model.blocks()] == [1, 1, 2, 2, 3, 3, 3, 3, 4, 4]
    assert set(model.aux) == {"2", "4", "6", "8"}
    for key, head in model.aux.items():
        assert isinstance(head, nn.Linear)
        assert head.in_features == model.cfg.stage_dims[model.cfg.stage_of(int(key)) - 1]
        assert head.out_features == len(CLASS_NAMES)


def test_shapes_and_decoder_contract(model):
    x = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        out = model(x)
        logits, aux = model.forward_train(x)
        # the decoder on NCHW stage outputs taken from timm's own stage modules
        h = model.encoder.patch_embed(x)
        feats = []
        for stage in model.encoder.layers:
            h = stage(h)
            feats.append(h.permute(0, 3, 1, 2))
        direct = model.decoder(feats)
    assert out.shape == (2, 7, 512, 512)
    assert logits.shape == (2, 7, 64, 64)
    assert [tuple(f.shape[1:]) for f in feats] == [(48, 64, 64), (96, 32, 32), (192, 16, 16), (384, 8, 8)]
    assert {k: tuple(v.shape) for k, v in aux.items()} == {
        2: (2, 64, 64, 7), 4: (2, 32, 32, 7), 6: (2, 16, 16, 7), 8: (2, 16, 16, 7)}
    torch.testing.assert_close(direct, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="4 stage outputs"):
        model.decoder(feats[:3])


def test_forward_is_deterministic(model):
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


def test_size_budget(model):
    n = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < n and 2 * n <= MAX_BYTES  # shipped as fp16


@pytest.mark.parametrize("half", [False, True])
def test_safetensors_round_trip(model, tmp_path, half):
    path = tmp_path / "swin.safetensors"
    save_demo_swin(model, path, extra={"note": "test"}, half=half)
    if half:  # what ships
        assert path.stat().st_size <= MAX_BYTES
    loaded = build_demo_swin(str(path))
    assert not loaded.training and loaded.cfg.extra == {"note": "test"}
    assert replace(loaded.cfg, extra={}) == model.cfg
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ref = model(x) if not half else _half_rounded(model)(x)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)


def _half_rounded(model: SwinUNet) -> SwinUNet:
    m = SwinUNet(model.cfg).eval()
    m.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return m


def test_torch_checkpoint_loads_weights_only(model, tmp_path):
    path = tmp_path / "swin.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "swin.json").write_text(model.cfg.to_json())
    loaded = build_demo_swin(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_mismatched_or_missing_files_are_user_errors(model, tmp_path):
    path = tmp_path / "swin.safetensors"
    save_demo_swin(model, path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["embed_dim"] = 32
    path.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        build_demo_swin(path)
    with pytest.raises(CheckpointError, match="config not found"):
        build_demo_swin(tmp_path / "none.safetensors")


def test_config_json_round_trip():
    cfg = replace(SwinDemoConfig(), extra={"a": 1})
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.json"
        p.write_text(cfg.to_json())
        assert SwinDemoConfig.from_json(p) == cfg
