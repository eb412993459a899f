"""Benchmarks of the project's fast paths against the loops a user would otherwise write.

Run ``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the options.
"""
