"""Hand-written kernels the compiled graphs call as custom ops (torch.ops.bucketserve.*)."""
