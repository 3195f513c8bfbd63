"""The dashboard's static files (plain ES modules, uPlot under `vendor/`), shipped as package data.

The api serves this folder at `/`; it finds it through importlib.resources, so an
installed wheel serves the same files as the repository checkout.
"""
