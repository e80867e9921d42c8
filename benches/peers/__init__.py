"""One module per peer system: its no-op tasks, an ``enqueue`` entry point and its worker command.

These modules import only their own library, ``redis`` and the standard library, so they can
run under another interpreter (arq needs redis<6, so it may live in a venv of its own).
"""
