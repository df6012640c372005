"""The pictures of what the network does when its input changes: the whole Zeiler & Fergus occlusion figure and the
invariance curves, Trainer-free :class:`~lightning_cnnviz.core.Picture` objects."""
