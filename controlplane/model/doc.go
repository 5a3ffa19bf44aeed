// Package model computes what each node must program for each service: the
// per-node views. It is pure: Kubernetes API objects in, view messages out,
// no client, no network, no kernel, so it is table-tested and fuzzed.
//
// A service's views are computed once for every group of nodes that share
// them (Views.Default, ByZone, ByNode), never once per node: a cluster of
// 5,000 nodes in 3 zones costs at most a few views per service, plus one per
// node that hosts an endpoint of a service with a node-local policy.
//
// Caveats: bad fields are skipped and reported, so a view may be partial
// where the input was invalid; the errors say what was left out.
package model
