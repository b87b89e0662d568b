"""Clinical applications on top of the platform (layer 5): served inside the enclave through
:mod:`medclave.enclave.inner_apps`, wired by the CLI."""
