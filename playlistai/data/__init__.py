"""Data stages: generate or ingest events, sessionize, build the vocabulary, split, encode."""
