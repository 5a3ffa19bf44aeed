// Package watch owns the control plane's single watch of the Kubernetes
// API: informers for Services, EndpointSlices and Nodes (trimmed of fields
// Spoke never reads), a debounce that turns bursts of events into one
// batch, and the step that recomputes the changed services' views and
// publishes them to the store.
//
// Caveats: nothing is published before every informer has synced, so no
// agent is ever sent a partial state; after that, each batch is published
// under one store revision.
package watch
