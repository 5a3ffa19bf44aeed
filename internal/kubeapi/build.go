package kubeapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/mod/modfile"
)

const (
	// mainModule is the module path that marks the repository root.
	mainModule = "github.com/spoke-proxy/spoke"

	// CacheDirEnv overrides the directory the binaries are cached in.
	CacheDirEnv = "SPOKE_CACHE_DIR"
)

// Binaries are the paths of the built kube-apiserver and etcd executables.
type Binaries struct {
	KubeAPIServer string
	Etcd          string
}

// Build compiles kube-apiserver and etcd from their modules under hack/ into
// the cache directory and returns their paths. The first build of
// kube-apiserver takes several minutes.
func Build(ctx context.Context) (Binaries, error) {
	paths, err := BuildComponents(ctx, "etcd", "kube-apiserver")
	if err != nil {
		return Binaries{}, err
	}
	return Binaries{Etcd: paths[0], KubeAPIServer: paths[1]}, nil
}

// BuildComponents compiles the modules hack/NAME into the cache directory and
// returns the binaries' paths in the order of names. A module is a go.mod and
// go.sum with one of:
//   - a main.go: its package is built (go build);
//   - only _test.go files: its test binary is built (go test -c), as for
//     Kubernetes' e2e.test;
//   - no Go files and one tool directive in go.mod: that main package of a
//     dependency is built, statically (CGO_ENABLED=0) so that it runs in any
//     container image, for commands that cannot be imported.
//
// A binary is rebuilt only when its module's go.mod, go.sum or Go files
// change; a file lock in the cache directory keeps concurrent
// callers (parallel test packages, several targets) from building at the
// same time. A module that requires k8s.io/kubernetes (or k8s.io/kubectl) is
// built with that Kubernetes version stamped into k8s.io/component-base/version, so the binary reports
// it (kubelet registers its node with it).
func BuildComponents(ctx context.Context, names ...string) ([]string, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	cache, err := cacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("creating cache directory: %w", err)
	}

	paths := make([]string, len(names))
	for i, name := range names {
		key, err := moduleHash(filepath.Join(root, "hack", name))
		if err != nil {
			return nil, err
		}
		paths[i] = filepath.Join(cache, name+"-"+key)
	}
	if allExecutable(paths) {
		return paths, nil
	}

	unlock, err := lockFile(ctx, filepath.Join(cache, "build.lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	for i, name := range names {
		// Another process may have built it while this one waited for the lock.
		if isExecutable(paths[i]) {
			continue
		}
		if err := goBuild(ctx, filepath.Join(root, "hack", name), paths[i]); err != nil {
			return nil, fmt.Errorf("building %s: %w", name, err)
		}
	}
	return paths, nil
}

// goBuild runs `go build` in moduleDir and moves the result to dst atomically,
// so a reader never sees a partly written binary.
func goBuild(ctx context.Context, moduleDir, dst string) error {
	tmp := fmt.Sprintf("%s.tmp%d", dst, os.Getpid())
	defer os.Remove(tmp)

	mod, err := parseGoMod(moduleDir)
	if err != nil {
		return err
	}
	verb, pkg, env, err := buildTarget(moduleDir, mod)
	if err != nil {
		return err
	}
	// -buildvcs=false: the binary does not need the checkout's VCS state,
	// and reading it fails in some CI checkouts.
	args := append(verb, "-buildvcs=false")
	if v := kubernetesVersion(mod); v != "" {
		args = append(args, "-ldflags", versionLDFlags(v))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "-o", tmp, pkg)...)
	cmd.Dir = moduleDir
	// The hack modules are separate modules: a go.work above them must not
	// pull them into a workspace.
	cmd.Env = append(append(os.Environ(), "GOWORK=off"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s in %s: %w\n%s", verb[0], moduleDir, err, bytes.TrimSpace(out))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("installing binary: %w", err)
	}
	return nil
}

// buildTarget says how to build the module in dir, whose go.mod is mod: the
// go subcommand, the package to build and any environment it needs (see
// BuildComponents).
func buildTarget(dir string, mod *modfile.File) (verb []string, pkg string, env []string, err error) {
	goFiles, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, "", nil, err
	}
	tests, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	switch {
	case len(goFiles) > len(tests):
		return []string{"build"}, ".", nil, nil
	case len(tests) > 0:
		// Vetting a dependency's tests is of no use here.
		return []string{"test", "-c", "-vet=off"}, ".", nil, nil
	case len(mod.Tool) != 1:
		return nil, "", nil, fmt.Errorf("module %s has no Go files and %d tool directives, want 1", dir, len(mod.Tool))
	}
	return []string{"build"}, mod.Tool[0].Path, []string{"CGO_ENABLED=0"}, nil
}

// moduleHash identifies a hack module's build inputs: its go.mod, go.sum and
// Go files, which pin every dependency version.
func moduleHash(dir string) (string, error) {
	goFiles, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return "", err
	}
	names := []string{"go.mod", "go.sum"}
	for _, f := range goFiles {
		names = append(names, filepath.Base(f))
	}
	h := sha256.New()
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("hashing build inputs: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s/%s\n", runtime.GOOS, runtime.GOARCH)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func allExecutable(paths []string) bool {
	for _, p := range paths {
		if !isExecutable(p) {
			return false
		}
	}
	return true
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait. The returned function releases the lock.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for build lock %s: %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return func() {
		// Closing the file releases the lock.
		f.Close()
	}, nil
}

// CacheDir returns the directory the binaries are cached in: see cacheDir.
func CacheDir() (string, error) { return cacheDir() }

// cacheDir is $SPOKE_CACHE_DIR, or spoke/ under the user cache directory
// ($XDG_CACHE_HOME or ~/.cache).
func cacheDir() (string, error) {
	if dir := os.Getenv(CacheDirEnv); dir != "" {
		return dir, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding cache directory (set %s): %w", CacheDirEnv, err)
	}
	return filepath.Join(dir, "spoke"), nil
}

// repoRoot finds the directory holding the go.mod of the main module, walking
// up from the working directory and then from this source file's directory
// (which is known when the caller was built from this checkout, as by go test
// or go run).
func repoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, start := range starts {
		for dir := start; ; dir = filepath.Dir(dir) {
			if modulePath(filepath.Join(dir, "go.mod")) == mainModule {
				return dir, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("no go.mod of module %s above %s", mainModule, strings.Join(starts, " or "))
}

// modulePath returns the module path declared in the go.mod file at path, or
// "" if there is none.
func modulePath(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		rest, ok := strings.CutPrefix(line, "module")
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			continue
		}
		rest, _, _ = strings.Cut(rest, "//")
		return strings.Trim(strings.TrimSpace(rest), `"`)
	}
	return ""
}

// parseGoMod reads the go.mod file of the module in dir.
func parseGoMod(dir string) (*modfile.File, error) {
	path := filepath.Join(dir, "go.mod")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return modfile.Parse(path, b, nil)
}

// requiredVersion returns the version of module mod that f requires, or ""
// if it does not.
func requiredVersion(f *modfile.File, mod string) string {
	for _, r := range f.Require {
		if r.Mod.Path == mod {
			return r.Mod.Version
		}
	}
	return ""
}

// kubernetesVersion returns the Kubernetes release a hack module builds: the
// k8s.io/kubernetes version it requires, or for kubectl, which needs only
// the published staging modules, v1.Y.Z for k8s.io/kubectl v0.Y.Z.
func kubernetesVersion(f *modfile.File) string {
	if v := requiredVersion(f, "k8s.io/kubernetes"); v != "" {
		return v
	}
	if v, ok := strings.CutPrefix(requiredVersion(f, "k8s.io/kubectl"), "v0."); ok {
		return "v1." + v
	}
	return ""
}

// versionLDFlags stamps a Kubernetes version (v1.36.3) into
// k8s.io/component-base/version, as Kubernetes' own build does.
func versionLDFlags(v string) string {
	const pkg = "k8s.io/component-base/version"
	major, minor, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	return fmt.Sprintf("-X %[1]s.gitVersion=%[2]s -X %[1]s.gitMajor=%[3]s -X %[1]s.gitMinor=%[4]s -X %[1]s.gitTreeState=clean", pkg, v, major, minor)
}
