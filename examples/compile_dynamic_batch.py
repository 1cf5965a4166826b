# The seed page's first script (optimum-rbln), ported to bucketserve: only the import changed, plus the
# model id and output directory may be given on the command line (defaults: the seed's).
import sys

from bucketserve import LlamaForCausalLM

model_id = sys.argv[1] if len(sys.argv) > 1 else "meta-llama/Meta-Llama-3-8B-Instruct"
save_dir = sys.argv[2] if len(sys.argv) > 2 else "rbln-dynamic-Llama-3-1-8B-Instruct"

# Compile with multiple decoder batch sizes
model = LlamaForCausalLM.from_pretrained(
    model_id=model_id,
    export=True,  # To compile the model, this argument must be True
    rbln_batch_size=8,  # Maximum batch size for prefill
    rbln_max_seq_len=8192,  # Maximum sequence length
    rbln_tensor_parallel_size=4,  # Tensor parallelism
    rbln_decoder_batch_sizes=[8, 4, 1],  # Compile decoders for batch sizes 8, 4, and 1
)

# Save compiled results to disk
model.save_pretrained(save_dir)
