"""Deployment runtimes bitfront drives to make, time and verify a plan's files: llama.cpp
through llama-cpp-python (the optional `bitfront[llama]` extra): loading a GGUF, its quantizer,
generation and per-type layer timings. Search and scoring stay elsewhere."""
