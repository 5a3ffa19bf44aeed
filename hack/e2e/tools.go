package main

import (
	"context"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// tools are the binaries the suite runs, built from the hack/ modules.
type tools struct {
	e2eTest, ginkgo string
	// Only for a real run:
	kubectl, agnhost, regression string
}

// buildTools builds e2e.test and ginkgo, and with all kubectl and the
// commands of the test images.
func buildTools(ctx context.Context, all bool) (tools, error) {
	var t tools
	p, err := kubeapi.BuildComponents(ctx, "e2e-test", "ginkgo")
	if err != nil {
		return t, err
	}
	t.e2eTest, t.ginkgo = p[0], p[1]
	if !all {
		return t, nil
	}
	p, err = kubeapi.BuildComponents(ctx, "kubectl", "agnhost", "regression-issue-74839")
	if err != nil {
		return t, err
	}
	t.kubectl, t.agnhost, t.regression = p[0], p[1], p[2]
	return t, nil
}
