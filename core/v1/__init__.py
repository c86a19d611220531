"""Generated gRPC stubs for endcap.v1 (see protos/; regenerate with make protos)."""
