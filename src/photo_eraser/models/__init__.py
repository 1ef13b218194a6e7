"""Model files: a manifest of known models, download, import and verification."""
