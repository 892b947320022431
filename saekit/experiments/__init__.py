"""Named experiments built from the library: the demo, the toy ground-truth benchmark."""
