// Command images builds Spoke's container images from static binaries, with
// no container daemon and no registry: each image is one layer holding the
// binary and a distroless-like skeleton (/etc/passwd and /etc/group naming
// root and nonroot (65532), /tmp, the nonroot user's home), written as a
// tarball that `ctr images import`, `docker load` and `crane push` accept.
//
// The images are reproducible: every file in the layer, the layer itself and
// the image's creation time carry one given timestamp (the commit's time
// under make), so the same binaries give the same image digest.
//
// Caveats: the images hold no CA bundle, no shell and no libc. Spoke's
// binaries are static and verify their peers with CA files they are given
// (the API server's from the ServiceAccount, the control plane's from a
// ConfigMap); the agent execs nothing, and IPVS needs the ip_vs module
// already loaded on the host (the agent does not run modprobe).
package main
