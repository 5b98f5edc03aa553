"""The browser labelling app: a stdlib HTTP server (``server``), its request logic (``app``), the page
(``static/``) and a demo run directory to try it on (``demo``).

Start it with ``rlhf-control label RUN_DIR`` or, from code, ``start_server(run_dir)`` / ``serve(run_dir)``.
"""

from rlhf_control.web.server import LabelServer, serve, start_server

__all__ = ["LabelServer", "serve", "start_server"]
