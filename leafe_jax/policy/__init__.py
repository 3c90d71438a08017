"""The transformer policy: Llama / Qwen2 decoder, KV-cache sampler, HF checkpoints."""
