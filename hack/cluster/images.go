package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/spoke-proxy/spoke/hack/internal/imagetar"
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
	specs := map[string]imagetar.Spec{
		"pause.tar":   {Ref: pauseImage, Files: map[string]string{"/pause": probe}, Entrypoint: []string{"/pause", "pause"}},
		"probe.tar":   {Ref: probeImage, Files: map[string]string{"/probe": probe}, Entrypoint: []string{"/probe"}},
		"coredns.tar": {Ref: corednsImage, Files: map[string]string{"/coredns": b.coredns}, Entrypoint: []string{"/coredns"}},
	}
	var tars []string
	for file, spec := range specs {
		path := filepath.Join(dir, file)
		if err := imagetar.Write(path, spec); err != nil {
			return nil, fmt.Errorf("writing image %s: %w", spec.Ref, err)
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
