"""Swin demo training: the dense masked pruning stand-in equals real removal, targets, schedule,
and the training command end to end (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prune_viz.backbones.demo_swin_frozen import forward_frozen, masked_block, merge_frozen
from prune_viz.backbones.demo_swin_model import SwinDemoConfig, SwinUNet, build_demo_swin
from prune_viz.train_swin import EvalView, cell_majority, loss_fn, sample_stops


# A small variant keeps these tests fast: grids 32, 16, 8, 4 at 256 px, window 4 (stages 1-3
# shifted, stage 4 one window), the same code paths as the shipped 512 px config.
SMALL = SwinDemoConfig(img_size=256, window_size=4, embed_dim=16, num_heads=(1, 2, 4, 8), decoder_dims=(16, 24, 32))


@pytest.fixture(scope="module")
def model() -> SwinUNet:
    torch.manual_seed(0)
    return SwinUNet(SMALL).eval()


def _removed_reference(block, x: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """The block computed on the kept tokens of each window only (what real removal does):
    B x H x W x C -> B x H x W x C with frozen tokens held."""
    b, h, w, c = x.shape
    ws, shift = block.window_size, block.shift_size
    attn = block.attn
    y, f = block.norm1(x), frozen
    if any(shift):
        y = torch.roll(y, (-shift[0], -shift[1]), (1, 2))
        f = torch.roll(f, (-shift[0], -shift[1]), (1, 2))
    nh, nw = h // ws[0], w // ws[1]
    out = torch.zeros_like(y)
    bias = attn._get_rel_pos_bias()[0]  # heads x A x A
    for bi in range(b):
        for wi in range(nh * nw):
            r, s = divmod(wi, nw)
            win = y[bi, r * ws[0]:(r + 1) * ws[0], s * ws[1]:(s + 1) * ws[1]].reshape(-1, c)
            kept = ~f[bi, r * ws[0]:(r + 1) * ws[0], s * ws[1]:(s + 1) * ws[1]].reshape(-1)
            if not kept.any():
                continue
            q, k, v = attn.qkv(win[kept]).reshape(int(kept.sum()), 3, attn.num_heads, -1).permute(1, 2, 0, 3)
            logits = (q * attn.scale) @ k.transpose(-2, -1) + bias[:, kept][:, :, kept]
            if block.attn_mask is not None:
                logits = logits + block.attn_mask[wi][kept][:, kept]
            o = attn.proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(int(kept.sum()), -1))
            full = torch.zeros(ws[0] * ws[1], c)
            full[kept] = o
            out[bi, r * ws[0]:(r + 1) * ws[0], s * ws[1]:(s + 1) * ws[1]] = full.view(ws[0], ws[1], c)
    if any(shift):
        out = torch.roll(out, shift, (1, 2))
    res = x + out
    res = res + block.mlp(block.norm2(res))
    return torch.where(frozen[..., None], x, res)


@pytest.mark.parametrize("stage,index", [(0, 0), (0, 1), (2, 1), (3, 1)])  # plain, shifted, one window
def test_masked_block_equals_real_removal(model, stage, index):
    block = model.encoder.layers[stage].blocks[index]
    g, c = model.cfg.stage_grids()[stage], model.cfg.stage_dims[stage]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, g, g, c, generator=gen)
    frozen = torch.rand(2, g, g, generator=gen) < 0.4
    with torch.no_grad():
        got = masked_block(block, x, frozen)
        want = _removed_reference(block, x, frozen)
    kept = ~frozen
    torch.testing.assert_close(got[kept], want[kept], rtol=1e-4, atol=1e-4)
    assert torch.equal(got[frozen], x[frozen])


def test_no_stops_is_the_plain_forward_and_stops_hold_features(model):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain, aux = model.forward_train(x)
        same, aux2 = forward_frozen(model, x, {})
        assert torch.equal(plain, same)
        assert all(torch.equal(aux[k], aux2[k][0]) and aux2[k][1].all() for k in aux)
        stop = torch.zeros(1, 16, 16, dtype=torch.bool)
        stop[0, :8] = True  # the top half stops after layer 3 (stage 2)
        pruned, aux3 = forward_frozen(model, x, {3: stop})
    assert not torch.equal(pruned, plain)
    assert aux3[2][1].all() and torch.equal(aux3[4][1][0], ~stop[0])  # layer 4 scored only the alive half
    assert torch.equal(aux3[6][1][0], ~merge_frozen(stop)[0])
    with pytest.raises(ValueError, match="grid"):
        forward_frozen(model, x, {3: torch.zeros(1, 8, 8, dtype=torch.bool)})  # stage 2 is 16 x 16


def test_merge_keeps_a_token_alive_if_any_child_is():
    f = torch.ones(1, 4, 4, dtype=torch.bool)
    f[0, 0, 1] = False  # one child of the top-left merged token alive
    f[0, 3, 3] = False
    assert merge_frozen(f).tolist() == [[[False, True], [True, False]]]


def test_cell_majority():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 3
    labels[0, 0, 2:] = 1  # half of the top-right cell: a tie of 0 and 1 goes to the lower label
    labels[0, 2:, 2:] = 2
    labels[0, 3, 3] = 5
    assert cell_majority(labels, (2, 2), 6).tolist() == [[[3, 0], [0, 2]]]


def test_sample_stops():
    grids = {layer: g for layer, g in zip(range(1, 10), (64, 64, 32, 32, 16, 16, 16, 16, 8))}
    rng = np.random.default_rng(0)
    assert sample_stops(rng, 2, grids, 0.0) == {}
    for _ in range(20):
        stops = sample_stops(rng, 2, grids, 1.0)
        assert 1 <= len(stops) <= 3
        for layer, s in stops.items():
            assert s.shape == (2, grids[layer], grids[layer]) and s.dtype == torch.bool


def test_loss_backpropagates_into_every_head(model):
    m = SwinUNet(model.cfg)
    m.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 256, 256, generator=gen)
    labels = torch.randint(0, 7, (1, 256, 256), generator=gen)
    loss = loss_fn(m, x, labels, 0.4, {5: torch.rand(1, 8, 8, generator=gen) < 0.5})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(m.aux[k].weight.grad is not None and m.aux[k].weight.grad.abs().sum() > 0 for k in m.aux)
    assert m.decoder.head.weight.grad.abs().sum() > 0


def test_eval_view_reads_like_a_backbone(model):
    from prune_viz.train_eval import evaluate_heads

    out = evaluate_heads(EvalView(model), "val", 1, progress=False)
    assert set(out) == {"main", "aux2", "aux4", "aux6", "aux8", "class_shares"}
    assert 0.0 <= out["main"]["miou"] <= 1.0


def test_training_command_end_to_end(tmp_path, monkeypatch):
    import prune_viz.train_swin as ts

    # the timing itself is not under test (and is slow on a loaded machine)
    monkeypatch.setattr(ts, "forward_seconds", lambda m, threads=2, repeat=7: {
        "median_s": 0.1, "threads": threads, "repeat": repeat, "load_avg_1min": 0.0})
    out = tmp_path / "s.safetensors"
    assert ts.main(["--out", str(out), "--steps", "2", "--val", "1", "--threads", "1", "--workers", "0",
                    "--warmup", "1", "--p-prune", "1.0"]) == 0
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["extra"]["training"]["steps_done"] == 2 and cfg["extra"]["training"]["finished"]
    assert set(cfg["extra"]["metrics"]["splits"]) == {"val", "test", "shift"}
    card = (tmp_path / "MODEL_CARD_SWIN.md").read_text()
    assert "| val |" in card and "stage 2 ends at layer 4" in card and "--steps 2" in card
    build_demo_swin(out)
    # --eval-only rewrites the card from the saved weights and keeps the training record
    (tmp_path / "MODEL_CARD_SWIN.md").unlink()
    assert ts.main(["--out", str(out), "--val", "1", "--threads", "1", "--eval-only"]) == 0
    assert "2 steps of batch 4" in (tmp_path / "MODEL_CARD_SWIN.md").read_text()
