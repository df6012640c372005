"""The methods the pictures are made of, Trainer-free: saliency (and its registered variants), top activations and
their projections, receptive fields, feature visualization, t-SNE, activation sites and their statistics. They
never import the monitors' objects (:mod:`lightning_cnnviz.core.monitors`)."""
