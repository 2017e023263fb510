"""Python shared by the CPU Triton models."""
