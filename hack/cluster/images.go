package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The images the cluster itself needs, made from local binaries: nothing is
// pulled. Pods name them with a fixed tag, so kubelet never pulls them.
const (
	pauseImage   = "registry.k8s.io/pause:3.10.2"
	corednsImage = "localhost/spoke-cluster/coredns:" + corednsVersion
	probeImage   = "localhost/spoke-cluster/probe:1"
)

// Spoke's images as make images writes them.
var spokeImageTars = []string{"bin/images/spoke-controlplane.tar", "bin/images/spoke-agent.tar"}

// imageSpec is a single-layer image holding static binaries.
type imageSpec struct {
	ref        string
	files      map[string]string // path in the image -> file on the host
	entrypoint []string
	user       string
}

// writeImage writes spec as a docker-save tarball that ctr can import.
func writeImage(path string, spec imageSpec) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for dst, src := range spec.files {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dst, "/"), Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config = v1.Config{Entrypoint: spec.entrypoint, User: spec.user}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(spec.ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

// imageRefs returns the references a docker-save tarball holds.
func imageRefs(path string) ([]string, error) {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var refs []string
	for _, d := range m {
		refs = append(refs, d.RepoTags...)
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("%s names no image", path)
	}
	return refs, nil
}

// clusterImages builds the probe binary and writes the pause, CoreDNS and
// probe images into dir; it returns the tarballs.
func clusterImages(ctx context.Context, repo, dir string, b binaries) ([]string, error) {
	probe := filepath.Join(dir, "probe")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", probe, "./hack/cluster/probe")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the probe: %w\n%s", err, out)
	}
	specs := map[string]imageSpec{
		"pause.tar":   {ref: pauseImage, files: map[string]string{"/pause": probe}, entrypoint: []string{"/pause", "pause"}},
		"probe.tar":   {ref: probeImage, files: map[string]string{"/probe": probe}, entrypoint: []string{"/probe"}},
		"coredns.tar": {ref: corednsImage, files: map[string]string{"/coredns": b.coredns}, entrypoint: []string{"/coredns"}},
	}
	var tars []string
	for file, spec := range specs {
		path := filepath.Join(dir, file)
		if err := writeImage(path, spec); err != nil {
			return nil, fmt.Errorf("writing image %s: %w", spec.ref, err)
		}
		tars = append(tars, path)
	}
	return tars, nil
}

// spokeImages returns make images' tarballs.
func spokeImages(repo string) ([]string, error) {
	var tars []string
	for _, t := range spokeImageTars {
		p := filepath.Join(repo, t)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("the images of make images: %w", err)
		}
		tars = append(tars, p)
	}
	return tars, nil
}

var errNoTag = errors.New("no tag")

// imageTag returns the tag of the image named repository in the tarballs.
func imageTag(tars []string, repository string) (string, error) {
	for _, t := range tars {
		refs, err := imageRefs(t)
		if err != nil {
			return "", err
		}
		for _, r := range refs {
			if repo, tag, ok := strings.Cut(r, ":"); ok && repo == repository {
				return tag, nil
			}
		}
	}
	return "", fmt.Errorf("%s: %w in %v", repository, errNoTag, tars)
}
