"""Plain-language glossary of the words the page uses (markdown strings, no gradio)."""

from __future__ import annotations

GLOSSARY: dict[str, str] = {
    "token": "One square patch of the image (16 x 16 px on the demo model) turned into a vector; a Vision "
    "Transformer computes every token in every block. Pruning = computing fewer of them.",
    "block": "One layer of the transformer (attention + MLP). Layers are numbered from 1; 'prune after layer L' "
    "means block L runs on every token and blocks L+1.. only on the kept ones.",
    "MAC": "One multiply-add, the unit of arithmetic counted here. 1 GMAC = 10^9 MACs. What most segmentation "
    "papers print as 'GFLOPs' is usually GMACs.",
    "FLOP": "One floating-point operation; a multiply-add is two, so FLOPs = 2 x MACs.",
    "mIoU": "Mean intersection over union: per class, the overlap of predicted and true pixels divided by their "
    "union, averaged over classes; 1 = perfect. Needs a ground-truth mask.",
    "boundary F": "How well the class borders of two segmentations line up (F-score of border pixels within a "
    "small tolerance); pruning errors show up at borders first.",
    "γ": "LVTP's trade-off number (Eq. 11): % of GFLOPs saved per mIoU point lost. Higher is better; '—' when "
    "mIoU did not drop.",
    "Tsallis entropy": "A family of entropies with an index q: q > 1 stresses a token's strongest channels "
    "(saliency), q < 1 its weak ones (detail); q = 1 is Shannon's entropy. LVTP mixes one of each per token. "
    "It is computed over a token's own channel values, so a flat image patch, whose channels are evenly "
    "spread, can score high.",
    "Sobel": "A 3 x 3 filter that measures how fast brightness changes: large on edges, zero on flat areas. "
    "LVTP uses it to rescue tokens on edges.",
    "k-means": "Groups vectors into k clusters around k centres, moving each centre to the mean of its group "
    "until stable. LVTP clusters tokens and keeps or drops whole clusters.",
    "early exit": "A token stops being computed and keeps the prediction an auxiliary head made for it at that "
    "layer (DToP). Unlike pruning, its answer is final and cannot be corrected later.",
    "auxiliary head": "A small classifier attached after a middle block that predicts each token's class early; "
    "DToP and MATP read its confidence.",
    "merging": "Instead of dropping tokens, similar ones are averaged into one (ToMe). Not among the methods here: "
    "every removed token keeps its own last features.",
    "pending": "LVTP's in-between state: not kept by the first test, not dropped yet; the Sobel test decides.",
}


def glossary_markdown() -> str:
    """The glossary as a markdown list (the page's 'Glossary' accordion)."""
    return "\n".join(f"- **{term}** — {text}" for term, text in GLOSSARY.items())
