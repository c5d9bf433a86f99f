"""Child programs that misbehave on purpose, for infersup's fault tests.

``misbehave.py`` stands in for llama-server; ``fake_sglang/`` (a PYTHONPATH
root, not a package) stands in for SGLang's ``python -m sglang.launch_server``.
See README.md.
"""
