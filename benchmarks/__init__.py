"""Benchmarks: each module has ``main()`` printing a table with ratios against a baseline
measured in the same run. ``make bench`` (``python -m benchmarks``) runs them all."""
