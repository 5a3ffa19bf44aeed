// Package imagetar writes container images made from files on the host as
// docker-save tarballs that `ctr images import` reads: nothing is pulled
// and no container daemon or registry is needed.
package imagetar

import (
	"archive/tar"
	"bytes"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec is a linux/amd64 image: an optional base layer (a root filesystem
// tarball) and a layer of files, links and directories.
type Spec struct {
	Ref      string
	Base     string            // root filesystem tarball, or ""
	Files    map[string]string // path in the image -> file on the host
	Symlinks map[string]string // path in the image -> target
	Dirs     []string
	// Entrypoint, Cmd and Env are the image's configuration.
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// Write writes s as a docker-save tarball at path, atomically.
func Write(path string, s Spec) error {
	img := empty.Image
	if s.Base != "" {
		base, err := tarball.LayerFromFile(s.Base)
		if err != nil {
			return err
		}
		if img, err = mutate.AppendLayers(img, base); err != nil {
			return err
		}
	}
	layer, err := filesLayer(s)
	if err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config = v1.Config{Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: s.Env}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(s.Ref)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// filesLayer is a layer holding s's directories, in the order given, then
// its files and symlinks, in the order of their paths.
func filesLayer(s Spec) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range s.Dirs {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			return nil, err
		}
	}
	for _, dst := range slices.Sorted(maps.Keys(s.Files)) {
		b, err := os.ReadFile(s.Files[dst])
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dst, "/"), Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	for _, dst := range slices.Sorted(maps.Keys(s.Symlinks)) {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dst, "/"), Linkname: s.Symlinks[dst], Mode: 0o777, Typeflag: tar.TypeSymlink}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
}
