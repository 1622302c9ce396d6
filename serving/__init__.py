"""The PlayListAI HTTP service: `uvicorn serving.main:app` (see README, "Serving")."""
