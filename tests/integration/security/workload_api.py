"""A real SPIFFE Workload API server for tests: the spec's gRPC service on a Unix socket, fed by the embedded CA.

SPIRE itself is not packaged here, so this stands in for a SPIRE agent: it answers
``FetchX509SVID`` and ``FetchX509Bundles`` as streams (DER chain, PKCS#8 key, DER bundle, DER CRLs)
and pushes a fresh response whenever :meth:`WorkloadApiServer.rotate` is called. Like an agent,
it refuses callers without the ``workload.spiffe.io: true`` metadata.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.svid import Svid


class WorkloadApiServer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Serves one workload's SVID from ``ca`` at ``unix://<socket_path>``."""

    def __init__(self, ca: EmbeddedCA, spiffe_id: str, socket_path: str, ttl_s: int = 3600) -> None:
        self.ca, self.spiffe_id, self.ttl_s = ca, spiffe_id, ttl_s
        self.address = f"unix://{socket_path}"
        self._cond = threading.Condition()
        self._generation = 0
        self._svid = ca.issue_svid(spiffe_id, ttl_s)
        self.refused_without_header = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self._server)
        self._server.add_insecure_port(self.address)

    def start(self) -> WorkloadApiServer:
        self._server.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._generation = -1
            self._cond.notify_all()
        self._server.stop(grace=0)

    def rotate(self) -> Svid:
        """Issue a new SVID and push it (and the current bundle and CRLs) to every open stream."""
        svid = self.ca.issue_svid(self.spiffe_id, self.ttl_s)
        with self._cond:
            self._svid = svid
            self._generation += 1
            self._cond.notify_all()
        return svid

    def _authorised(self, context: grpc.ServicerContext) -> bool:
        if ("workload.spiffe.io", "true") in tuple(context.invocation_metadata()):
            return True
        self.refused_without_header += 1
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        return False

    def _bundle_der(self) -> bytes:
        return b"".join(a.public_bytes(serialization.Encoding.DER) for a in self.ca.bundle().authorities)

    def _crls_der(self) -> list[bytes]:
        pem = self.ca.crl_path.read_bytes()
        marker = b"-----BEGIN X509 CRL-----"
        return [
            x509.load_pem_x509_crl(marker + block).public_bytes(serialization.Encoding.DER)
            for block in pem.split(marker)[1:]
        ]

    def _stream(self, context: grpc.ServicerContext, build):  # type: ignore[no-untyped-def]
        if not self._authorised(context):
            return
        seen = None
        while context.is_active():
            with self._cond:
                if seen == self._generation:
                    self._cond.wait(0.2)
                    continue
                if self._generation < 0:
                    return
                seen = self._generation
                svid = self._svid
            yield build(svid)

    def FetchX509SVID(self, request, context):  # noqa: N802 - the spec's name
        def build(svid: Svid) -> workload_pb2.X509SVIDResponse:
            return workload_pb2.X509SVIDResponse(
                svids=[
                    workload_pb2.X509SVID(
                        spiffe_id=str(svid.spiffe_id),
                        x509_svid=b"".join(c.public_bytes(serialization.Encoding.DER) for c in svid.chain),
                        x509_svid_key=svid.private_key.private_bytes(
                            serialization.Encoding.DER,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption(),
                        ),
                        bundle=self._bundle_der(),
                    )
                ],
                crl=self._crls_der(),
            )

        yield from self._stream(context, build)

    def FetchX509Bundles(self, request, context):  # noqa: N802 - the spec's name
        def build(_svid: Svid) -> workload_pb2.X509BundlesResponse:
            return workload_pb2.X509BundlesResponse(
                bundles={f"spiffe://{self.ca.trust_domain}": self._bundle_der()}, crl=self._crls_der()
            )

        yield from self._stream(context, build)
