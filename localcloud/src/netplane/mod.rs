//! The network data plane: instance and VPC namespaces, ENI veths, the vRouter and its filters.
