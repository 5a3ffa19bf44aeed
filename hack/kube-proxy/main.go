// Command kube-proxy is an unmodified kube-proxy built from the
// k8s.io/kubernetes module, for the side-by-side benchmark
// (hack/bench-kube-proxy).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
