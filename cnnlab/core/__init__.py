"""The bottom layer: services every other part of cnnlab may use (see each module)."""
