//! The cluster model: Services, EndpointSlices and this node, validated at construction.
//!
//! These are kipvs' own types, not k8s-openapi's: the kube crate converts API objects
//! into the `Raw*` inputs, and `try_new` validates them once.

pub mod endpoints;
pub mod node;
pub mod service;

pub use endpoints::{
    Conditions, Endpoint, EndpointPort, EndpointSlice, RawEndpoint, RawEndpointPort,
    RawEndpointSlice, SliceName,
};
pub use node::Node;
pub use service::{
    RawIngress, RawService, RawServicePort, Service, ServiceName, ServicePort, ServiceType,
    SessionAffinity, TrafficDistribution, TrafficPolicy,
};
