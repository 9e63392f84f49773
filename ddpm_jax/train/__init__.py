"""Training: the jitted step (`step`), the loop (`loop.train`), and what a
training process needs around it (`runtime`)."""
