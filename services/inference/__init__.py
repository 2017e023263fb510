"""InferenceService: token streaming from NVIDIA Triton and OpenAI-compatible backends."""
