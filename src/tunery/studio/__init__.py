"""`tunery studio`: a local web page over the run folders (FastAPI + a small static front end)."""
