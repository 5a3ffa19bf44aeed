package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/spoke-proxy/spoke/internal/imagetest"
)

var created = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

// buildHello compiles a tiny static program into dir as the way make
// builds Spoke's binaries.
func buildHello(t *testing.T, dir, msg string) string {
	t.Helper()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(src, "go.mod"), "module hello\n\ngo 1.22\n")
	write(t, filepath.Join(src, "main.go"), "package main\n\nfunc main() { println(\""+msg+"\") }\n")
	bin := filepath.Join(dir, "spoke-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func digest(t *testing.T, s Spec) v1.Hash {
	t.Helper()
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Two builds of the same source, in different folders at different times,
// give the same image; another source gives another.
func TestBuildIsReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles two programs")
	}
	a := buildHello(t, t.TempDir(), "hello")
	time.Sleep(1100 * time.Millisecond) // a different mtime on disk must not matter
	b := buildHello(t, t.TempDir(), "hello")
	other := filepath.Join(t.TempDir(), "spoke-agent")
	write(t, other, "another binary")
	spec := func(bin string) Spec {
		return Spec{Binary: bin, User: nonroot, Created: created, Arch: "amd64", Labels: map[string]string{"v": "1"}}
	}
	da, db := digest(t, spec(a)), digest(t, spec(b))
	if da != db {
		t.Fatalf("same source, different digests: %s and %s", da, db)
	}
	if do := digest(t, spec(other)); do == da {
		t.Fatalf("different binaries, same digest %s", do)
	}
	later := spec(a)
	later.Created = created.Add(time.Second)
	if dl := digest(t, later); dl == da {
		t.Fatalf("different timestamps, same digest %s", dl)
	}
}

// The image runs the binary as the given user, and every file in it carries
// the one timestamp.
func TestBuildContents(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "spoke-controlplane")
	write(t, bin, "not really a binary")
	img, err := Build(Spec{Binary: bin, User: nonroot, Created: created, Arch: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != "/usr/local/bin/spoke-controlplane" {
		t.Errorf("entrypoint %q", got)
	}
	if cf.Config.User != "65532" || cf.OS != "linux" || cf.Architecture != "arm64" || !cf.Created.Equal(created) {
		t.Errorf("config: user %q, platform %s/%s, created %v", cf.Config.User, cf.OS, cf.Architecture, cf.Created)
	}
	entries := imagetest.LayerEntries(t, img)
	if h := entries["usr/local/bin/spoke-controlplane"]; h == nil || h.Mode != 0o755 || h.Size != int64(len("not really a binary")) {
		t.Errorf("binary entry %+v", h)
	}
	if h := entries["home/nonroot/"]; h == nil || h.Uid != 65532 {
		t.Errorf("nonroot home %+v", h)
	}
	for n, h := range entries {
		if !h.ModTime.Equal(created) {
			t.Errorf("%s: mtime %v, want %v", n, h.ModTime, created)
		}
	}
}

// run writes both tarballs under their tags; each loads back with the
// digest it was built with.
func TestRunWritesLoadableTarballs(t *testing.T) {
	binDir, out := t.TempDir(), t.TempDir()
	for _, im := range images {
		write(t, filepath.Join(binDir, im.name), im.name)
	}
	if err := run(binDir, out, "example.com/spoke", "v1.2.3-4-gabcdef0-dirty", "abc", "amd64", created); err != nil {
		t.Fatal(err)
	}
	for _, im := range images {
		tag, err := name.NewTag("example.com/spoke/" + im.name + ":v1.2.3-4-gabcdef0-dirty")
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(filepath.Join(out, im.name+".tar"), &tag)
		if err != nil {
			t.Fatalf("%s: %v", im.name, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Config.User != im.user || cf.Config.Labels["org.opencontainers.image.version"] != "v1.2.3-4-gabcdef0-dirty" {
			t.Errorf("%s: user %q, labels %v", im.name, cf.Config.User, cf.Config.Labels)
		}
	}
	for _, bad := range []string{"", "latest", "v1+build", "-x"} {
		if err := run(binDir, out, "example.com/spoke", bad, "", "amd64", created); err == nil {
			t.Errorf("version %q accepted", bad)
		}
	}
}
