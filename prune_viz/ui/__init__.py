"""What the app computes and draws, without gradio.

Everything the page shows is a numpy image, a plotly figure (as a dict), a markdown / HTML
string or a table (list of rows) built here, so it can be tested and benchmarked without a
browser. Per-tab data live in a :class:`~prune_viz.ui.session.Session` (kept by the web app in
``gr.State``); nothing here stores per-request state in a module global (built models are
shared read-only through ``build_backbone``'s cache).

Modules: ``texts`` (prose), ``session`` (state and runs), ``choices`` (backbones, methods,
layers, examples), ``controls`` (parameter controls), ``views`` (pictures), ``tables`` and
``charts`` (numbers), ``compare``, ``prompts`` (SAM), ``export`` (the zip), ``files`` (PNG
transport). Units everywhere: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs; 1 GMAC = 1e9 MACs.
"""
