"""Feature-size limits of the Triton attention kernels. No triton import here: the ops layer reads them to
decide, before importing triton, whether backend="auto" can run a case on the Triton kernels."""

# The dot kernels hold [BLOCK_T, D] and [BLOCK_S, M] tiles whole; their backward spilled at 256.
ATTENTION_DOT_MAX_FEATURES = 128
# The additive kernels hold [BLOCK_T, D] and [BLOCK_T, M]; 256 compiles spill-free.
ATTENTION_ADDITIVE_MAX_FEATURES = 256
# The decoder step's attention holds one context row [M] in a block; configs compiled up to M = 1024.
DECODER_STEP_MAX_MEMORY = 1024
