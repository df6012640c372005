"""Methods that change the input and watch the network answer: occlusion by a sliding square (Zeiler & Fergus),
translations, scalings and rotations (their invariance curves). They never import the monitors' objects."""
