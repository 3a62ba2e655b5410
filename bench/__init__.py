"""Benchmark harness: the same loopback load against mailgate and reference servers.

Run it with ``.venv/bin/python bench/run.py`` (``--help`` for options) after
``sh bench/setup.sh``. It writes ``docs/benchmarks.md``, a chart beside it and
the raw numbers to ``bench/results/latest.json``.
"""
