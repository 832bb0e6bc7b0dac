"""The app's prose: backbone notes, method lessons, what each diagnostic is, the one wording
for missing weights. Strings only (plus the small functions that pick one)."""

from __future__ import annotations

from ..backbones import BUILDERS, TIMM_PREFIX, TIMM_SWIN, BackboneFacts, check_backbone_name
from ..backbones.provenance import random_sentence
from ..backbones.registry_folder import MODELS_PREFIX, model_note
from ..methods import get_method


BACKBONE_NOTES: dict[str, str] = {
    "demo": "ViT-Tiny-shaped segmenter trained by this project on synthetic aerial scenes "
    "(7 classes, 512 x 512 input, 32 x 32 = 1024 tokens). About 0.1 s per forward on 2 CPU cores.",
    "demo_matp": "The demo segmenter fine-tuned with MATP's pruning in the loop (its auxiliary heads and "
    "features learnt to live with MATP's decisions; assets/MODEL_CARD_MATP.md). Use it with matp; other methods "
    "run on it too. Same size and speed as demo.",
    "sam_vit_b": "SAM ViT-B image encoder, 64 x 64 = 4096 tokens at 1024 px. **About 10 s per forward "
    "on 2 CPU cores** (a run needs two: unpruned and pruned); 512 px input is about 4x faster.",
    "sam_vit_l": "SAM ViT-L image encoder. **Roughly 30 s per forward on 2 CPU cores** at 1024 px (about 3x ViT-B's MACs).",
    "sam_vit_h": "SAM ViT-H image encoder (LVTP's paper setting). **Roughly 60 s per forward on 2 CPU cores** at 1024 px "
    "(about 6x ViT-B's MACs).",
    "timm": "A plain timm ViT. Its weights are **random** unless its pretrained weights were downloaded (the button "
    "below, online only); on random weights the token statistics show the mechanics only. Segments are k-means "
    "clusters of the features.",
    "demo_swin": "Swin-UNet-shaped segmenter trained by this project on synthetic aerial scenes (7 classes, 512 x 512 "
    "input): a 4-stage Swin encoder (patch 8: 64 x 64 tokens in stage 1, halving at each stage), a UNet decoder fed "
    "by every stage's full grid (pruned tokens frozen), auxiliary heads for MATP. Token maps are drawn at each stage's "
    "resolution (docs/methods/swin.md).",
    "timm_swin": "A timm Swin Transformer (hierarchical: 4 stages, 8 x 8 shifted windows, the grid halving at each "
    "patch merging; 512 px gives 128 x 128 tokens in stage 1). Offline the weights are **random**. Token maps are drawn "
    "at each stage's resolution; a merged token lives on if any of its 4 children did (docs/methods/swin.md).",
}


WHAT_AM_I_LOOKING_AT = (
    "**What am I looking at?**\n"
    "- A Vision Transformer cuts the image into **tokens**, one per 16 x 16 pixel patch (the grid on the token map); "
    "every block of the network computes every token.\n"
    "- **Pruning after layer L**: blocks L+1 onwards skip the tokens the method removed (they keep the features they "
    "had when dropped and are put back for the final segmentation).\n"
    "- The numbers show what that **saves** (MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs) and what it **costs** "
    "(pixels whose class changed; with a ground-truth mask, mIoU).\n"
)


METHOD_TEACHING: dict[str, str] = {
    "none": "Use it as the reference: the token map is all blue and the numbers equal the unpruned model.",
    "random": "If a method does not clearly beat random pruning at the same MAC budget (see the Compare tab), "
    "its scores are not telling it much.",
    "evit": "Attention says which tokens the network looks at, not where the object borders are. Measured on the "
    "demo model: it keeps the textured ground and drops most open-water tokens (the class token attends to "
    "texture); watch the change map along thin structures.",
    "lvtp": "What it really does here (measured on the demo model): LVTP keeps most flat water tokens and prunes "
    "more of the textured low vegetation. Why: its entropy is computed over each token's own channel values; "
    "a uniform patch gives a feature whose channels are evenly spread, i.e. a *high* Tsallis entropy, so the "
    "clusters of flat regions rank as the most informative (rank 0) and are kept, while textured grass gives "
    "peaked features, ranks low, and is pending or removed. 'High entropy' is not 'busy image' here. The Sobel "
    "step then rescues pending tokens on strong edges. Check the per-class line under the token map, and click "
    "a token to read the rule that decided it.",
    "dtop": "Think of it as a teacher marking easy questions early: a token whose class is already obvious "
    "(open water, a big roof) stops computing, and its early answer is final. Raise the threshold and fewer "
    "tokens dare to leave; mistakes made by an early exit can never be corrected later.",
    "matp": "Every token gets a difficulty score from several clues at once; the cut-off adapts to each image "
    "(alpha x this image's mean score), so an easy image loses more tokens than a busy one. Compare the facet "
    "maps: where do confidence and entropy disagree?",
}


# What the "Why?" tab says for methods that look at no signal.
NO_SIGNALS: dict[str, str] = {
    "none": "none prunes nothing, so there is no decision to explain: every token goes through every block.",
    "random": "random looks at no signal: it removes a seeded random share of the tokens, the floor any real "
    "method should beat at the same MAC budget.",
}


# Diagnostics the app knows by name: (panel title, colour-bar label). Unknown names are shown
# with their raw name, so a new method's diagnostics appear without touching the app.
DIAG_INFO: dict[str, tuple[str, str]] = {
    "entropy_q1": ("Tsallis entropy, q1 term (saliency, q1 > 1)", "normalised entropy"),
    "entropy_q2": ("Tsallis entropy, q2 term (detail, q2 < 1)", "normalised entropy"),
    "entropy": ("Fused entropy: alpha x q1 term + (1 - alpha) x q2 term", "normalised entropy (1 = flat distribution)"),
    "alpha": ("alpha: weight of the q1 term (from the token's norm)", "alpha (q2 term weight = 1 - alpha)"),
    "score": ("Score that ranks tokens", "score"),
    "weight": ("Entropy weight in the k-means (Eq. 5)", "weight"),
    "cluster1": ("1st clustering: cluster rank (0 = most informative)", "cluster rank"),
    "cluster2": ("2nd clustering of pending tokens (0 = pruned first; grey = kept by the 1st pass)", "cluster rank"),
    "edge_energy": ("Sobel edge energy per token", "mean gradient magnitude"),
    "sobel": ("Sobel edge magnitude (pixels)", "gradient magnitude"),
    "confidence": ("Auxiliary head: top-class confidence", "softmax probability"),
    "predicted_class": ("Auxiliary head: predicted class", ""),
    "retained": ("Kept as class context despite qualifying to leave", ""),
    "relation": ("Relation to its class", "relation"),
    "attention_score": ("Attention received", "attention"),
}


# The same name can mean different things in different methods.
DIAG_INFO_BY_METHOD: dict[tuple[str, str], tuple[str, str]] = {
    ("dtop", "entropy"): ("Auxiliary head: prediction entropy", "normalised entropy (1 = uniform over classes)"),
    ("matp", "entropy"): ("Entropy facet: prediction entropy", "normalised entropy (1 = uniform over classes)"),
    ("matp", "confidence"): ("Confidence facet: top-class probability", "softmax probability"),
    ("matp", "relation"): ("Relation facet: similarity to its class's typical token", "cosine, -1..1"),
    ("matp", "score"): ("Multi-faceted score (low = easy, pruned first)", "score"),
    ("matp", "retained"): ("Kept by relation as class context", ""),
    ("lvtp", "score"): ("Score that ranked the 1st-pass clusters", "score"),
}


SCALAR_INFO: dict[str, str] = {
    "n_pending": "tokens pending after LVTP's first pass",
    "threshold": "DToP exit confidence threshold",
    "adaptive_threshold": "MATP adaptive score threshold (alpha x mean score)",
    "n_retained_by_relation": "tokens MATP kept as class context",
}


def input_size_control(facts: BackboneFacts) -> dict[str, str]:
    """Label and help of the input-size dropdown (the same SAM sizes also suit Swin's 8 x 8 windows)."""
    if facts.stage_ends:
        return {"label": "Swin input size (px)",
                "info": "512 px: 128 x 128 tokens in stage 1 at patch 4, halving at each stage; 1024 is 4x the work"}
    return {"label": "SAM input size (px)", "info": "512 px is about 4x faster; 1024 = the official size"}


def backbone_note(name: str, facts: BackboneFacts | None = None) -> str:
    """Speed and weights of a backbone family, in markdown (a registered model: its sidecar's
    note); with ``facts``, a plain-words line when its weights are random."""
    family = check_backbone_name(name)
    if name.startswith(MODELS_PREFIX):
        note = model_note(name)
    elif family is TIMM_SWIN:
        note = BACKBONE_NOTES["timm_swin"]
    else:
        note = BACKBONE_NOTES.get(name) or (BACKBONE_NOTES["timm"] if family is BUILDERS[TIMM_PREFIX] else "")
    if facts is not None and facts.weights_kind == "random":
        fetch = (" Press **Download pretrained weights** below to fetch the library's weights (needs network)."
                 if facts.downloadable else "")
        note = f"⚠️ **{random_sentence(name)}**{fetch}\n\n{note}"
    return note


def download_button(facts: BackboneFacts) -> tuple[str, bool]:
    """(label, visible) of the download button: missing official weights, or random ones that
    the library has pretrained weights for (timm)."""
    if facts.downloadable and facts.loaded and facts.weights_kind == "random":
        return f"Download pretrained weights for {facts.name} (needs network)", True
    return f"Download {facts.name}", facts.downloadable and not facts.loaded


def weights_missing(name: str) -> str:
    """The one line every action answers with when a backbone's weights are not here."""
    return f"{name}: weights missing — see the note under Backbone for how to get them."


def missing_weights_help(facts: BackboneFacts) -> str:
    """Markdown under the backbone choice: why the weights cannot be loaded and what to do
    ("" when they are here). The server never opens a path typed in a browser."""
    if facts.loaded:
        return ""
    download = (f" Or press **Download {facts.name}** below (needs internet; the file is sha256-checked)."
                if facts.downloadable else "")
    return (f"**{facts.name}: weights missing.** {facts.missing}{download}\n\n"
            "The app never opens a file path typed into the browser.")


def method_explanation(method: str) -> str:
    spec = get_method(method)
    needs = []
    if spec.needs_aux:
        needs.append("auxiliary heads (trained extra classifiers after some blocks)")
    if spec.needs_attention:
        needs.append("the attention maps of the block")
    tail = f"\n\n*Needs:* {', '.join(needs)}." if needs else ""
    return f"**{method}** — {spec.description}\n\n{METHOD_TEACHING.get(method, '')}{tail}"


def diag_info(method: str, name: str) -> tuple[str, str]:
    """(title, colour-bar label) of a diagnostic; its raw name for unknown ones."""
    return DIAG_INFO_BY_METHOD.get((method, name)) or DIAG_INFO.get(name) or (name, name)


PROMPTS_HOW = ("Click on the image to add prompts, then **Predict masks**: the same prompt is answered "
               "from the unpruned and from the pruned image embedding.")
PROMPTS_NEED = ("*Prompts need a SAM backbone (choose sam_vit_b / l / h above). The SAM backbones also show "
                "their everything-mode masks in the Segmentation tab.*")
