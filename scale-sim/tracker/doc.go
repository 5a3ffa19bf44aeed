// Package tracker records, for the scale simulator, when each change was
// made at the API and when each simulated node applied it, and turns those
// times into per-class latency histograms (healthy and slow nodes) and
// per-node activity counts.
//
// Caveats: a change back to what a node already holds ends that node's
// pending changes for the service (the control plane coalesces them), and
// latencies are wall-clock times within one process, so they include the
// simulator's own scheduling delays.
package tracker
