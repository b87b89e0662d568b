"""Wire formats shared by both ends: pydantic models, media types, version constants."""
