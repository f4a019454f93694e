"""Generated gRPC modules for protos/dualdistill/v1/teacher.proto (run `make protos` after editing it)."""
