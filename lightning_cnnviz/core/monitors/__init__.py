"""Each monitor's logic as a Trainer-free :class:`~lightning_cnnviz.core.Picture`, with the policies and histories
they keep (alerts, evolution) and the channel selection they share."""
