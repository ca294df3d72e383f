"""Tasks that lstmkit trains on: generated on the fly (memory, adding) or read from a file."""
