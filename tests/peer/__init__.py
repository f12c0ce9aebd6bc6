"""PyTorch's own aot_compile tests (test/dynamo/test_aot_compile.py), ported to torchkiln across processes."""
