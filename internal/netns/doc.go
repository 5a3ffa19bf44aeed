// Package netns creates, enters and removes Linux network namespaces, for
// code that must act in a namespace other than its own (a datapath
// attaching to a node's devices) and for tests that build networks of
// namespaces.
//
// Caveats: entering a namespace locks a goroutine to its OS thread for the
// duration of a function; sockets and netlink handles created there stay in
// that namespace after the function returns, which is the point. A thread
// that cannot be returned to its namespace is left locked, so that the Go
// runtime discards it. Creating namespaces needs CAP_SYS_ADMIN.
package netns
