"""Drawing: tensors in, (3, H, W) pictures in [0, 1] out, on the tensors' device. It never imports the monitors'
objects (:mod:`lightning_cnnviz.core.monitors`)."""
