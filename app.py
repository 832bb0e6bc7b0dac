"""prune_viz — see token pruning inside a Vision Transformer that segments images.

The Space entry point: build the page (``prune_viz.webapp``), queue it, launch it. Nothing
touches the network at import or start-up. Run: ``python app.py`` (honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT). API: ``docs/api.md``.
"""

from __future__ import annotations

import os

from prune_viz.webapp import build_demo, limit_malloc_arenas

limit_malloc_arenas()  # before Gradio starts its worker threads: keeps the server's memory flat

# Requests beyond QUEUE_SIZE waiting ones are refused at once ("Queue is full, try again")
# instead of piling up; at most MODEL_WORKERS networks run at the same time (they share the
# CPU cores). Both can be changed per deployment; README "Limits" has the measured figures.
QUEUE_SIZE = int(os.environ.get("PRUNE_VIZ_QUEUE_SIZE", "32"))
MODEL_WORKERS = int(os.environ.get("PRUNE_VIZ_WORKERS", "2"))
MAX_FILE_SIZE = "50mb"  # prune_viz.io refuses larger files too (CLI, API)
# Gradio keeps a copy of this page's configuration per browser / API session (the RSS growth
# bench/bench_load.py sees from round to round) for up to 10 000 sessions by default; the
# oldest beyond this many are forgotten (that visitor's next event starts from a fresh Session).
SESSION_CAPACITY = int(os.environ.get("PRUNE_VIZ_SESSIONS", "200"))

# `python app.py` (and a Space) analyses the first example before serving, so a first visit finds
# its numbers ready; importing this module (tests) does not.
demo = build_demo(warm=__name__ == "__main__")
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_WORKERS)

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_SIZE, state_session_capacity=SESSION_CAPACITY)
