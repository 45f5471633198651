"""The HTTP API for the web app (FastAPI on uvicorn): `prediction-pipeline api serve`."""
