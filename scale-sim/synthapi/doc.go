// Package synthapi is the scale simulator's synthetic API: an HTTP server
// that speaks enough of the Kubernetes API (list, and watch with resume,
// bookmarks and streamed initial events) for client-go informers of Nodes,
// Services and EndpointSlices, from objects the simulator holds in memory.
//
// It lets a control plane that runs as its own process, with its real
// informers, be fed tens of thousands of objects and a steady stream of
// changes without etcd and kube-apiserver taking the machine's CPU, and it
// lets the simulator know to the microsecond when each change was handed
// to the control plane's watch.
//
// It also serves the agents' pods (in kube-system, with the one field
// selector spec.serviceAccountName) and, once told, a service-account
// issuer's discovery document and keys, so that a control plane that
// authenticates agents finds what it would find in a real API server.
//
// Caveats: no authentication, no TLS, no selectors but that one (a request
// with another is refused), no pagination (a list returns everything), no writes through
// HTTP, and no defaulting or validation: the simulator must hand it objects
// as an API server would store them. A watch that falls more than 16,384
// events behind is closed, and one that resumes from a version older than
// the retained history gets 410 Expired, as from a real API server.
package synthapi
