"""Exact, fast, checkpoint-safe AMSGrad and Adam for PyTorch."""
