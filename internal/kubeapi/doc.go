// Package kubeapi runs a real kube-apiserver backed by a real etcd, for
// integration tests, the local demo and the scale simulator.
//
// The package owns:
//   - building both binaries from the Go modules under hack/kube-apiserver and
//     hack/etcd (Build), cached in $SPOKE_CACHE_DIR or the user cache
//     directory's spoke/ and rebuilt only when a module's go.mod, go.sum or
//     main.go change;
//   - starting the pair on free ports of 127.0.0.1, each run with its own
//     data directory, key pair and admin token (Start, ForTest), restarting
//     kube-apiserver alone (Server.Restart) and stopping both (Server.Stop);
//   - the admin client configuration (Server.RESTConfig,
//     Server.WriteKubeconfig).
//
// What the server does: real validation, defaulting, field selectors,
// resourceVersions and watches; ClusterIP allocation from
// ServiceClusterIPRange; RBAC (and the Node authorizer); ServiceAccount
// tokens through TokenRequest, checked by TokenReview; the system namespaces
// ("default", "kube-system", ...) and the "kubernetes" Service.
//
// Caveats:
//   - There is no kube-controller-manager, so nothing a controller does
//     happens: Services get no EndpointSlices (tests create them), namespaces
//     get no "default" ServiceAccount, deleted namespaces stay Terminating,
//     and owner references are not garbage-collected. The ServiceAccount
//     admission plugin is disabled so that Pods can be created anyway.
//   - The "kubernetes" Service has no endpoints: its address would be
//     127.0.0.1, which Endpoints validation rejects.
//   - The first Build compiles kube-apiserver, about five minutes on two
//     cores; run cold test runs with go test -timeout 20m. Later builds are
//     cache hits. Old binaries stay in the cache directory when the modules
//     change.
//   - Each server uses about 300 MB of memory and takes a few seconds to
//     start; share one within a test where possible.
//   - etcd runs without fsync: its data survives a kube-apiserver restart,
//     not a machine crash.
//   - Child processes run in their own process groups and are killed if the
//     parent process dies, but only Stop removes a temporary data directory.
//
// The package does not log: errors are returned, and a start failure includes
// the end of the failing process's log. Logs are kept in the data directory
// (Server.LogPaths).
package kubeapi
