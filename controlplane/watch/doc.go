// Package watch owns the control plane's single watch of the Kubernetes
// API: informers for Services, EndpointSlices and Nodes (trimmed of fields
// Spoke never reads), a debounce that turns bursts of events into one
// batch, and the step that recomputes the changed services' views and
// publishes them to the store.
//
// What a batch recomputes: the services whose Service or EndpointSlices
// changed, plus, when a node's zone changes (or the node appears or goes
// away), the services that have a view of their own for that node: those
// with a Local traffic policy and an endpoint on it, or PreferSameNode
// hints naming it. Services whose views differ only by zone are never
// recomputed for node changes; the store moves the node between zone views.
// So the cost of a node change follows the services that depend on that
// node, not the cluster's services.
//
// Metrics: kube-proxy's sync_proxy_rules_* figures under the
// spoke_controlplane prefix (duration, last and last-queued timestamps,
// endpoint and service changes seen and pending), invalid input skipped by
// object kind, views computed by group of nodes, and services recomputed
// for topology changes. Each service's views carry the earliest
// EndpointSlice last-change-trigger-time of the changes they hold, from
// which the stream server measures network_programming_duration_seconds.
//
// Caveats: nothing is published before every informer has synced, so no
// agent is ever sent a partial state; after that, each batch is published
// under one store revision. Trigger times older than the watcher, or
// unchanged by an update, are ignored (as kube-proxy ignores them), so a
// control-plane restart observes no latency for changes made before it.
package watch
