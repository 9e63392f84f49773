"""Sample-quality and likelihood metrics: the Fréchet distance (`fid`), the
FID Inception-v3 (`inception`), the offline MNIST LeNet (`mnist_lenet`),
bits/dim (`likelihood`), and `report.evaluate`, what the evaluate command runs."""
