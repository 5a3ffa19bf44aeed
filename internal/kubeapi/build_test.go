package kubeapi

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// writeModule writes files (name -> content) into a new directory.
func writeModule(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuildTarget(t *testing.T) {
	const goMod = "module example.com/m\n\ngo 1.26.0\n"
	for _, tc := range []struct {
		name    string
		files   map[string]string
		verb    []string
		pkg     string
		env     []string
		wantErr bool
	}{
		{name: "command", files: map[string]string{"go.mod": goMod, "main.go": "package main\n"}, verb: []string{"build"}, pkg: "."},
		{name: "command with tests", files: map[string]string{"go.mod": goMod, "main.go": "package main\n", "main_test.go": "package main\n"}, verb: []string{"build"}, pkg: "."},
		{name: "test binary", files: map[string]string{"go.mod": goMod, "e2e_test.go": "package e2e\n"}, verb: []string{"test", "-c", "-vet=off"}, pkg: "."},
		{name: "tool", files: map[string]string{"go.mod": goMod + "\ntool example.com/dep/cmd/x\n"}, verb: []string{"build"}, pkg: "example.com/dep/cmd/x", env: []string{"CGO_ENABLED=0"}},
		{name: "no Go files, no tool", files: map[string]string{"go.mod": goMod}, wantErr: true},
		{name: "two tools", files: map[string]string{"go.mod": goMod + "\ntool (\n\texample.com/a\n\texample.com/b\n)\n"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeModule(t, tc.files)
			mod, err := parseGoMod(dir)
			if err != nil {
				t.Fatal(err)
			}
			verb, pkg, env, err := buildTarget(dir, mod)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("buildTarget = %v %q, want an error", verb, pkg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(verb, tc.verb) || pkg != tc.pkg || !slices.Equal(env, tc.env) {
				t.Errorf("buildTarget = %v %q %v, want %v %q %v", verb, pkg, env, tc.verb, tc.pkg, tc.env)
			}
		})
	}
}

func TestModuleHashCoversEveryGoFile(t *testing.T) {
	dir := writeModule(t, map[string]string{"go.mod": "module m\n", "go.sum": "", "e2e_test.go": "package e2e\n"})
	before, err := moduleHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "e2e_test.go"), []byte("package e2e // changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	after, err := moduleHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	if before == after {
		t.Errorf("moduleHash did not change when a test file changed: %s", before)
	}
}

func TestRequiredVersion(t *testing.T) {
	dir := writeModule(t, map[string]string{"go.mod": "module m\n\nrequire (\n\tk8s.io/kubernetes v1.36.3\n\tk8s.io/api v0.36.3 // indirect\n)\n\nreplace k8s.io/api => k8s.io/api v0.36.3\n"})
	mod, err := parseGoMod(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := requiredVersion(mod, "k8s.io/kubernetes"); got != "v1.36.3" {
		t.Errorf("requiredVersion(k8s.io/kubernetes) = %q, want v1.36.3", got)
	}
	if got := requiredVersion(mod, "k8s.io/none"); got != "" {
		t.Errorf("requiredVersion(k8s.io/none) = %q, want empty", got)
	}
}

func TestKubernetesVersion(t *testing.T) {
	cases := map[string]string{
		"module m\n\nrequire (\n\tk8s.io/component-base v0.36.3\n\tk8s.io/kubernetes v1.36.3\n)\n": "v1.36.3",
		"module m\n\nrequire (\n\tk8s.io/component-base v0.36.3\n\tk8s.io/kubectl v0.36.3\n)\n":    "v1.36.3",
		"module m\n\nrequire go.etcd.io/etcd/server/v3 v3.6.8\n":                                   "",
	}
	for gomod, want := range cases {
		mod, err := parseGoMod(writeModule(t, map[string]string{"go.mod": gomod}))
		if err != nil {
			t.Fatal(err)
		}
		if got := kubernetesVersion(mod); got != want {
			t.Errorf("kubernetesVersion(%q) = %q, want %q", gomod, got, want)
		}
	}
}
