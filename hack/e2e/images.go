package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spoke-proxy/spoke/hack/internal/imagetar"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// The Debian root filesystem of the agnhost and nginx images: upstream's
// agnhost is Alpine with these tools, which the tests run through
// `kubectl exec` (sh, curl, wget, nc, nslookup/dig, ip, timeout).
const (
	debianSuite = "bookworm"
	// Bump when the image recipes below change, to rebuild cached images.
	imageRecipe = "1"
)

var rootfsPackages = []string{"bash", "bind9-dnsutils", "curl", "wget", "netcat-openbsd", "iproute2", "iputils-ping", "procps", "nginx-light"}

// The images the selected specs run, by the names e2e.test v1.36.3 gives
// them (test/utils/image/manifest.go), so that no KUBE_TEST_REPO_LIST is
// needed and kubelet finds them without pulling (the tags are not :latest).
const (
	agnhostImage    = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
	nginxImage      = "registry.k8s.io/e2e-test-images/nginx:1.15-4"
	busyboxImage    = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	regressionImage = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.4"
)

// buildImages writes the test images as docker-save tarballs in the cache
// and returns their paths. The Debian root filesystem (mmdebstrap) is built
// once and kept.
func buildImages(ctx context.Context, t tools, log *slog.Logger) ([]string, error) {
	cache, err := cacheDir()
	if err != nil {
		return nil, err
	}
	rootfs, err := debianRootfs(ctx, cache, log)
	if err != nil {
		return nil, err
	}
	busybox, applets, err := busyboxApplets(ctx)
	if err != nil {
		return nil, err
	}
	specs := []imagetar.Spec{
		{
			Ref: agnhostImage, Base: rootfs,
			Files:      map[string]string{"/agnhost": t.agnhost},
			Symlinks:   map[string]string{"/agnhost-2": "agnhost"},
			Dirs:       []string{"/uploads"},
			Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		},
		{Ref: nginxImage, Base: rootfs, Entrypoint: []string{"nginx", "-g", "daemon off;"}},
		{Ref: busyboxImage, Files: map[string]string{"/bin/busybox": busybox}, Symlinks: applets, Cmd: []string{"sh"}},
		{Ref: regressionImage, Files: map[string]string{"/regression-issue-74839": t.regression}, Entrypoint: []string{"/regression-issue-74839"}},
	}
	var tars []string
	for _, s := range specs {
		path := filepath.Join(cache, "e2e-images", imageFileName(s))
		if _, err := os.Stat(path); err != nil {
			log.Info("writing image", "ref", s.Ref)
			if err := writeImage(path, s); err != nil {
				return nil, fmt.Errorf("image %s: %w", s.Ref, err)
			}
		}
		tars = append(tars, path)
	}
	return tars, nil
}

// imageFileName names an image tarball by its inputs, which are themselves
// named by content (the cache's binaries and root filesystem).
func imageFileName(s imagetar.Spec) string {
	h := sha256.New()
	fmt.Fprintln(h, imageRecipe, s.Ref, s.Base, s.Entrypoint, s.Cmd, s.Dirs)
	for _, m := range []map[string]string{s.Files, s.Symlinks} {
		for _, k := range sortedKeys(m) {
			fmt.Fprintln(h, k, m[k])
		}
	}
	base := strings.NewReplacer("/", "_", ":", "_").Replace(s.Ref[strings.LastIndex(s.Ref, "/")+1:])
	return base + "-" + hex.EncodeToString(h.Sum(nil))[:12] + ".tar"
}

// debianRootfs builds a Debian minbase root filesystem with rootfsPackages
// into the cache, once.
func debianRootfs(ctx context.Context, cache string, log *slog.Logger) (string, error) {
	h := sha256.Sum256([]byte(debianSuite + " " + strings.Join(rootfsPackages, ",")))
	path := filepath.Join(cache, "e2e-rootfs-"+debianSuite+"-"+hex.EncodeToString(h[:])[:12]+".tar")
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		return path, nil
	}
	// An earlier build may have left a folder in its place.
	if err := os.RemoveAll(path); err != nil {
		return "", err
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return "", fmt.Errorf("mmdebstrap is needed for the test images' root filesystem (apt-get install mmdebstrap): %w", err)
	}
	log.Info("building the Debian root filesystem of the test images", "packages", rootfsPackages)
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	// mmdebstrap picks its output's format from the name unless told: the
	// partial file keeps the .tar suffix, and the format is named too.
	tmp := strings.TrimSuffix(path, ".tar") + ".partial.tar"
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--variant=minbase", "--format=tar", "--include="+strings.Join(rootfsPackages, ","), debianSuite, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mmdebstrap: %w\n%s", err, out)
	}
	return path, os.Rename(tmp, path)
}

// busyboxApplets returns the host's static busybox (Debian's busybox-static)
// and a link in /bin for each of its applets.
func busyboxApplets(ctx context.Context) (string, map[string]string, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return "", nil, fmt.Errorf("busybox is needed for the busybox image (apt-get install busybox-static): %w", err)
	}
	if path, err = filepath.EvalSymlinks(path); err != nil {
		return "", nil, err
	}
	out, err := exec.CommandContext(ctx, path, "--list").Output()
	if err != nil {
		return "", nil, fmt.Errorf("busybox --list: %w", err)
	}
	links := map[string]string{}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			links["/bin/"+a] = "busybox"
		}
	}
	return path, links, nil
}

// writeImage writes s, with the usual PATH in its environment, as a
// docker-save tarball that `ctr images import` reads, atomically.
func writeImage(path string, s imagetar.Spec) error {
	s.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return imagetar.Write(path, s)
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

func cacheDir() (string, error) {
	return kubeapi.CacheDir()
}
