"""``python -m pydl.demo --out DIR``: the toolkit end to end on the 8x8 digits (see __main__)."""
