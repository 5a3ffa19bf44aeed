package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// images are the images Spoke ships: the control plane runs as nonroot, the
// agent as root (it programs the kernel; the DaemonSet makes it privileged).
var images = []struct{ name, user string }{
	{"spoke-controlplane", nonroot},
	{"spoke-agent", ""},
}

// tagPattern is what a registry accepts as a tag.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func main() {
	binDir := flag.String("bin", "", "folder holding the static binaries spoke-controlplane and spoke-agent")
	out := flag.String("out", "bin/images", "folder the image tarballs are written to")
	repo := flag.String("repository", "ghcr.io/spoke-proxy", "registry and path the image names start with")
	version := flag.String("version", "", "image tag (make passes `git describe --tags --always --dirty`)")
	created := flag.Int64("created", 0, "the images' timestamp in Unix seconds (make passes the commit's time)")
	arch := flag.String("arch", "amd64", "GOARCH the binaries were built for")
	revision := flag.String("revision", "", "commit the binaries were built from, recorded as a label")
	flag.Parse()
	if err := run(*binDir, *out, *repo, *version, *revision, *arch, time.Unix(*created, 0).UTC()); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(binDir, out, repo, version, revision, arch string, created time.Time) error {
	switch {
	case binDir == "":
		return errors.New("-bin is required")
	case !tagPattern.MatchString(version):
		return fmt.Errorf("-version %q is not a valid image tag", version)
	case version == "latest":
		return errors.New("-version latest: images are named by version, never latest")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, im := range images {
		tag, err := name.NewTag(repo+"/"+im.name+":"+version, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image name: %w", err)
		}
		img, err := Build(Spec{
			Binary: filepath.Join(binDir, im.name), User: im.user, Created: created, Arch: arch,
			Labels: map[string]string{
				"org.opencontainers.image.source":   "https://github.com/spoke-proxy/spoke",
				"org.opencontainers.image.version":  version,
				"org.opencontainers.image.revision": revision,
			},
		})
		if err != nil {
			return fmt.Errorf("%s: %w", im.name, err)
		}
		file := filepath.Join(out, im.name+".tar")
		if err := tarball.WriteToFile(file, tag, img); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s %s %s\n", tag, digest, file)
	}
	return nil
}
