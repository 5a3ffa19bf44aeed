package kubeapi

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKubernetesVersion(t *testing.T) {
	cases := map[string]string{
		"module m\n\nrequire (\n\tk8s.io/component-base v0.36.3\n\tk8s.io/kubernetes v1.36.3\n)\n": "v1.36.3",
		"module m\n\nrequire (\n\tk8s.io/component-base v0.36.3\n\tk8s.io/kubectl v0.36.3\n)\n":    "v1.36.3",
		"module m\n\nrequire go.etcd.io/etcd/server/v3 v3.6.8\n":                                   "",
	}
	for gomod, want := range cases {
		path := filepath.Join(t.TempDir(), "go.mod")
		if err := os.WriteFile(path, []byte(gomod), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := kubernetesVersion(path); got != want {
			t.Errorf("kubernetesVersion(%q) = %q, want %q", gomod, got, want)
		}
	}
}
