"""Weight quantization as transforms over the plain model: schemes, the packed layout the kernels read."""
