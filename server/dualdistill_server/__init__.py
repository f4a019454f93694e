"""The dualdistill teacher service: one core, HTTP and gRPC transports, a dynamic batcher per model."""
