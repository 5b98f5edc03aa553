"""The browser labelling app: a stdlib HTTP server (``server``), who may use it (``access``), its
request logic (``app``), the page (``static/``) and a demo run directory to try it on (``demo``).

Start it with ``rlhf-control label RUN_DIR`` or, from code, ``rlhf_control.web.server.start_server(run_dir)``
/ ``serve(run_dir)``.
"""
