"""The online path: the request pipeline, the loaded model, the service, gRPC wiring, auth and limits."""
