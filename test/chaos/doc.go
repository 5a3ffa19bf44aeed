// Package chaos runs Spoke's fault scenarios as
// tests, one per scenario (TestScenarioN...), each asserting the scenario's
// pass criterion: the real control-plane and agent binaries as processes
// (built by the tests), one real kube-apiserver shared by the scenarios
// (each in a namespace of its own, with nodes of its own), and, where the
// datapath matters, the eBPF datapath in network namespaces with live
// connections through it. "Holds its view" always means the agent's cached
// resources equal the control plane's view of its node by content (a
// version is a hash of the content), its datapath programs exactly those
// services and its last drift check found nothing.
//
// go test runs a short form of each (make test); -chaos.long runs them at
// the scenarios' full sizes and lengths (make chaos, which counts the scenarios
// that held).
//
// Caveats: the scenarios need root and the eBPF features of
// internal/testnet; under CI=1 they fail, never skip, without them. The
// 5 s convergence bounds are the project's, measured on a shared machine.
package chaos
