"""The bottom layer: services every other part of cnnlab may use, depending only on the standard library,
numpy, torch (with safetensors, its file format) and `cnnlab.errors`; matplotlib is imported inside the
`figures` functions, when a figure is drawn. Every other package imports core; core imports none of them.

- `files`: atomic writes (a temporary file created safely in the destination folder, then renamed).
- `weights`: safetensors and `torch.load(weights_only=True)`, refusing anything that could run code.
- `figures`: matplotlib figures on the Agg canvas (no pyplot, no backend switching) and PNG output.
- `paths`: the user cache directory and its sub-folders, with their environment overrides.
- `run`: the run directory and the model card beside each set of weights.
- `preprocess`: uint8 images -> normalised float, the one place that does it.
- `machine`: CPU model and instruction-set class, a matmul peak, the CPU share other processes take.

Nothing here changes process-wide state (umask, allocator, matplotlib backend).
"""
