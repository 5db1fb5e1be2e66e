"""EagleEye's wire contract, shared by the client, the router and the worker, and depending on none of them.

- `eagleeye.api.names`: the names every side must agree on (gRPC service and health-check names,
  metadata keys, load-report names) and the default size limits.
- Generated stubs, one package per proto package of protos/ (`make protos` writes them):
  `eagleeye.api.detector.v1` (the Detector service clients call), `eagleeye.api.router.v1` (the
  router's admin API), `eagleeye.api.detector.testing.v1` (fault injection, test builds only),
  `eagleeye.api.router.xds.v3` (the subset of xDS the router's control plane serves) and
  `eagleeye.api.common.orca.v3` (ORCA load reports). The proto packages themselves (the names on
  the wire) are those of protos/, e.g. `eagleeye.detector.v1.Detector`.

Nothing here imports gRPC at module level except the generated `*_pb2_grpc` modules.
"""
