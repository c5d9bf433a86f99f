"""STAND-IN for SGLang, for infersup's tests: NOT SGLang.

Reproduces SGLang 0.5.23's readiness sequence and process tree from the
field notes (``shared/field-notes.md`` section C); see ``launch_server``.
Put ``tests/children/fake_sglang`` on PYTHONPATH so that
``python -m sglang.launch_server`` runs it. ``import sglang`` works;
``import sglang.srt.server_args`` fails (there is no ``srt`` here), so
infersup falls back to its bundled SGLang 0.5.23 flag table.
"""

__version__ = "0.5.23-standin"
