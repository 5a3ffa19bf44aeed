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

// component is one of the hack modules Build compiles.
type component struct {
	name string // binary name, also the directory under hack/
	dst  *string
}

// Build compiles kube-apiserver and etcd from their modules under hack/ into
// the cache directory and returns their paths. A binary is rebuilt only when
// its module's go.mod, go.sum or main.go change; a file lock in the cache
// directory keeps concurrent callers (parallel test packages) from building
// at the same time. The first build of kube-apiserver takes several minutes.
func Build(ctx context.Context) (Binaries, error) {
	root, err := repoRoot()
	if err != nil {
		return Binaries{}, err
	}
	cache, err := cacheDir()
	if err != nil {
		return Binaries{}, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("creating cache directory: %w", err)
	}

	var bins Binaries
	components := []component{
		{name: "etcd", dst: &bins.Etcd},
		{name: "kube-apiserver", dst: &bins.KubeAPIServer},
	}
	for _, c := range components {
		key, err := moduleHash(filepath.Join(root, "hack", c.name))
		if err != nil {
			return Binaries{}, err
		}
		*c.dst = filepath.Join(cache, c.name+"-"+key)
	}
	if allExecutable(components) {
		return bins, nil
	}

	unlock, err := lockFile(ctx, filepath.Join(cache, "build.lock"))
	if err != nil {
		return Binaries{}, err
	}
	defer unlock()

	for _, c := range components {
		// Another process may have built it while this one waited for the lock.
		if isExecutable(*c.dst) {
			continue
		}
		if err := goBuild(ctx, filepath.Join(root, "hack", c.name), *c.dst); err != nil {
			return Binaries{}, fmt.Errorf("building %s: %w", c.name, err)
		}
	}
	return bins, nil
}

// goBuild runs `go build` in moduleDir and moves the result to dst atomically,
// so a reader never sees a partly written binary.
func goBuild(ctx context.Context, moduleDir, dst string) error {
	tmp := fmt.Sprintf("%s.tmp%d", dst, os.Getpid())
	defer os.Remove(tmp)

	// -buildvcs=false: the binary does not need the checkout's VCS state,
	// and reading it fails in some CI checkouts.
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", tmp, ".")
	cmd.Dir = moduleDir
	// The hack modules are separate modules: a go.work above them must not
	// pull them into a workspace.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build in %s: %w\n%s", moduleDir, err, bytes.TrimSpace(out))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("installing binary: %w", err)
	}
	return nil
}

// moduleHash identifies a hack module's build inputs: its go.mod, go.sum and
// main.go, which pin every dependency version.
func moduleHash(dir string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
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

func allExecutable(components []component) bool {
	for _, c := range components {
		if !isExecutable(*c.dst) {
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
