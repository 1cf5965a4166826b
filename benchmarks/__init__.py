"""bucketserve's benchmark, kept out of the installed package (vLLM's layout): run it from a source checkout as
`python -m benchmarks ...` or `bucketserve bench ...`. See benchmarks/README.md."""
