package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// The node software, installed from the Go module proxy (with libseccomp's
// static archive from Debian's package for runc) into the cache directory.
const (
	containerdVersion = "v2.3.7"
	runcVersion       = "v1.5.3"
	cniVersion        = "v1.9.1"
	crictlVersion     = "v1.37.0"
	corednsVersion    = "v1.14.7"
)

// goTool is a set of commands installed with `go install PKG@VERSION`.
type goTool struct {
	name, version string
	pkgs          []string
	cgo           bool
	tags          string
}

var goTools = []goTool{
	{name: "containerd", version: containerdVersion, pkgs: []string{
		"github.com/containerd/containerd/v2/cmd/containerd",
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
		"github.com/containerd/containerd/v2/cmd/ctr",
	}},
	// kubelet always asks for the RuntimeDefault seccomp profile of the
	// pod sandbox: runc needs seccomp support.
	{name: "runc", version: runcVersion, pkgs: []string{"github.com/opencontainers/runc"}, cgo: true, tags: "seccomp"},
	{name: "cni-plugins", version: cniVersion, pkgs: []string{
		"github.com/containernetworking/plugins/plugins/main/bridge",
		"github.com/containernetworking/plugins/plugins/main/loopback",
		"github.com/containernetworking/plugins/plugins/ipam/host-local",
		"github.com/containernetworking/plugins/plugins/meta/portmap",
	}},
	{name: "crictl", version: crictlVersion, pkgs: []string{"sigs.k8s.io/cri-tools/cmd/crictl"}},
	{name: "coredns", version: corednsVersion, pkgs: []string{"github.com/coredns/coredns"}},
}

// binaries are the paths of everything the cluster runs on the host.
type binaries struct {
	kube       kubeapi.Binaries
	kubelet    string
	kcm        string
	scheduler  string
	kubectl    string
	containerd string // its folder also holds the shim and ctr
	runc       string
	cniDir     string
	crictl     string
	coredns    string
}

// buildAll builds or finds every binary in the cache.
func buildAll(ctx context.Context, log *slog.Logger) (binaries, error) {
	var b binaries
	start := time.Now()
	log.Info("building Kubernetes components (several minutes the first time)")
	paths, err := kubeapi.BuildComponents(ctx, "etcd", "kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler", "kubectl")
	if err != nil {
		return b, err
	}
	b.kube = kubeapi.Binaries{Etcd: paths[0], KubeAPIServer: paths[1]}
	b.kubelet, b.kcm, b.scheduler, b.kubectl = paths[2], paths[3], paths[4], paths[5]
	dirs := map[string]string{}
	for _, t := range goTools {
		d, err := installTool(ctx, t, log)
		if err != nil {
			return b, err
		}
		dirs[t.name] = d
	}
	b.containerd = filepath.Join(dirs["containerd"], "containerd")
	b.runc = filepath.Join(dirs["runc"], "runc")
	b.cniDir = dirs["cni-plugins"]
	b.crictl = filepath.Join(dirs["crictl"], "crictl")
	b.coredns = filepath.Join(dirs["coredns"], "coredns")
	log.Info("binaries ready", "took", time.Since(start).Round(time.Second))
	return b, nil
}

// installTool installs t into its own cache folder, unless it is there, and
// returns the folder.
func installTool(ctx context.Context, t goTool, log *slog.Logger) (string, error) {
	cache, err := kubeapi.CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "tools", t.name+"-"+t.version)
	if toolInstalled(dir, t) {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := flock(ctx, filepath.Join(cache, "tools", "install.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if toolInstalled(dir, t) {
		return dir, nil
	}
	log.Info("installing", "tool", t.name, "version", t.version)
	env := append(os.Environ(), "GOBIN="+dir, "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	args := []string{"install"}
	if t.cgo {
		sysroot, err := libseccompSysroot(ctx, filepath.Join(cache, "tools"))
		if err != nil {
			return "", err
		}
		env = append(env, "CGO_ENABLED=1",
			"PKG_CONFIG_LIBDIR="+filepath.Join(sysroot, "usr/lib/x86_64-linux-gnu/pkgconfig"),
			"PKG_CONFIG_SYSROOT_DIR="+sysroot)
	}
	if t.tags != "" {
		args = append(args, "-tags", t.tags)
	}
	for _, p := range t.pkgs {
		args = append(args, p+"@"+t.version)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = os.TempDir()
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("installing %s %s: %w\n%s", t.name, t.version, err, out)
	}
	return dir, nil
}

func toolInstalled(dir string, t goTool) bool {
	for _, p := range t.pkgs {
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(p))); err != nil {
			return false
		}
	}
	return true
}

// libseccompSysroot unpacks Debian's libseccomp-dev (without installing it)
// so that runc links libseccomp statically, and returns the folder.
func libseccompSysroot(ctx context.Context, toolsDir string) (string, error) {
	sysroot := filepath.Join(toolsDir, "libseccomp-sysroot")
	archive := filepath.Join(sysroot, "usr/lib/x86_64-linux-gnu/libseccomp.a")
	if _, err := os.Stat(archive); err == nil {
		return sysroot, nil
	}
	debs := filepath.Join(toolsDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "libseccomp-dev")
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download libseccomp-dev: %w\n%s", err, out)
	}
	matches, _ := filepath.Glob(filepath.Join(debs, "libseccomp-dev_*.deb"))
	if len(matches) == 0 {
		return "", errors.New("apt-get download left no libseccomp-dev package")
	}
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", matches[len(matches)-1], sysroot).CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpacking libseccomp-dev: %w\n%s", err, out)
	}
	// Without the shared object the linker takes the static archive.
	_ = os.Remove(filepath.Join(sysroot, "usr/lib/x86_64-linux-gnu/libseccomp.so"))
	return sysroot, nil
}

// flock takes an exclusive lock on path, waiting for it while ctx allows.
func flock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
