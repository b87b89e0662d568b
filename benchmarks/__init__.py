"""Benchmarks: each module has ``main()`` printing a table of figures measured in alternating
rounds against a baseline of the same run (methodology: ``benchmarks._common``).
``make bench`` (``python -m benchmarks``) runs them all."""
