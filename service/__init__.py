"""The HTTP front end: FastAPI, torch-free, talking to workers only through Redis and RQ."""
