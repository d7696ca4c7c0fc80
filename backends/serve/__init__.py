"""Serving built models: an OpenAI-compatible HTTP server and a terminal chat over one
batched engine. Not a node backend (it builds nothing); ``llmbuild serve`` and
``llmbuild chat`` run it on a built stage or ``hf`` export.

``model.py`` loads what is served, ``batch.py`` holds a left-padded batch and its KV
cache, ``sequence.py`` is one request's sampling and text, ``engine.py`` the decode loop
that admits and retires requests, ``schemas.py`` and ``api.py`` the OpenAI API,
``chat.py`` the terminal chat. Nothing here is imported by the planner."""
