// Package fleet runs the scale simulator's nodes: each is the real node
// agent (stream client, reconciler, optional bbolt state file) with its own
// gRPC connection to the control plane and an in-memory datapath. Only the
// kernel is left out.
//
// Thousands of agents share one process, so the fleet's transport interns
// received resources by their encoding and the agents share one decoder
// that checks and decodes each resource once: a view that reaches 10,000 nodes is held, checked and
// decoded once. Each node's connection counts the bytes it reads, and can
// be made to read slowly.
//
// Caveats: a restarted node gets a new, empty in-memory datapath (a real
// node's kernel keeps its state across an agent restart), so a restart
// always reprograms it from the state file: the conservative case.
package fleet
