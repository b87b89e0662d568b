"""The ``medclave`` command: wiring only, no logic."""
