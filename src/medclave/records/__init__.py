"""Confidential retrieval over FHIR records: ingest, sealed store, in-memory index, and
authorization of every candidate before its text reaches a model (docs/retrieval.md)."""
