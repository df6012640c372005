"""What the pictures are fed: batches (where the images and labels are), the fixed probe sets, the task."""
