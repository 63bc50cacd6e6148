"""Training our own small demo model on procedural faces (no data or weights to download)."""
