"""Queue workers that keep a RePaint model resident and run inpainting jobs from Redis."""
