"""The model as the pictures see it: its layer map, hooks and runs up to a layer, where images go in, pass sizes."""
