//! The controller's service split between a node's two gRPC planes.
//!
//! A node started with a separate internal listener serves Raft, replication and the
//! controller's whole service there, for the other nodes only; its client listener offers the
//! controller's service through [`ClientFacing`], which refuses the calls only brokers make,
//! so that firewalling the internal port takes every inter-node call out of a client's reach.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// The `runnel.v1.ControllerService` methods that brokers call and clients never do: broker
/// registration and sessions, ISR changes and producer-id blocks. Forged, they fence or
/// impersonate a broker or shrink an ISR, so the client listener refuses them.
pub const BROKER_ONLY_METHODS: [&str; 5] =
    ["RegisterBroker", "BrokerHeartbeat", "BrokerSession", "AlterPartition", "AllocateProducerIds"];

/// Whether `path` (`/package.Service/Method`) names a method of `service` in `methods`.
fn is_one_of(path: &str, service: &str, methods: &[&str]) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|method| methods.contains(&method))
}

/// Marks a request that came in on a client listener (in its extensions): the controller's
/// WatchMetadata leaves users' credentials out of what it sends there.
#[derive(Debug, Clone, Copy)]
pub struct ClientPlane;

/// A gRPC service as the client listener offers it: `refused` methods answer
/// PERMISSION_DENIED, naming the internal listener; the rest go to the service.
#[derive(Debug, Clone)]
pub struct ClientFacing<S> {
    inner: S,
    refused: &'static [&'static str],
}

impl<S: NamedService> ClientFacing<S> {
    /// `inner`, less `refused` (method names of `S`).
    pub fn new(inner: S, refused: &'static [&'static str]) -> Self {
        ClientFacing { inner, refused }
    }
}

impl<S: NamedService> NamedService for ClientFacing<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for ClientFacing<S>
where
    S: NamedService + Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        request.extensions_mut().insert(ClientPlane);
        let path = request.uri().path();
        if is_one_of(path, S::NAME, self.refused) {
            let status = tonic::Status::permission_denied(format!(
                "{path} is an inter-node call: this is the client listener; nodes call it on the internal listener (--internal-addr)"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_methods_of_the_service_match() {
        let service = "runnel.v1.ControllerService";
        assert!(is_one_of("/runnel.v1.ControllerService/AlterPartition", service, &BROKER_ONLY_METHODS));
        assert!(is_one_of("/runnel.v1.ControllerService/BrokerSession", service, &BROKER_ONLY_METHODS));
        for other in [
            "/runnel.v1.ControllerService/CreateTopic",
            "/runnel.v1.ControllerService/AlterPartitionX",
            "/runnel.v1.ControllerService/AlterPartition/",
            "/runnel.v1.ControllerServiceX/AlterPartition",
            "/runnel.v1.BrokerService/AlterPartition",
            "runnel.v1.ControllerService/AlterPartition",
            "/",
            "",
        ] {
            assert!(!is_one_of(other, service, &BROKER_ONLY_METHODS), "{other}");
        }
    }
}
