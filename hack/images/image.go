package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nonroot is the user an unprivileged image runs as, distroless's nonroot.
const nonroot = "65532"

// Spec describes one image.
type Spec struct {
	// Binary is the static binary on disk; it becomes the entrypoint at
	// /usr/local/bin/<its base name>.
	Binary string
	// User is the image's user; "" runs as root.
	User string
	// Created is the one timestamp the image carries.
	Created time.Time
	// Arch is the binary's GOARCH; the OS is linux.
	Arch string
	// Labels are the image's labels.
	Labels map[string]string
}

// file is one entry of the image's only layer.
type file struct {
	name     string
	mode     int64
	uid, gid int
	body     []byte
	dir      bool
}

// Build returns the image Spec describes.
func Build(s Spec) (v1.Image, error) {
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("reading the binary: %w", err)
	}
	entrypoint := "/usr/local/bin/" + path.Base(s.Binary)
	layer, err := layerOf(skeleton(entrypoint[1:], bin), s.Created)
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: s.Created}, CreatedBy: "spoke hack/images", Comment: path.Base(s.Binary)},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", s.Arch, v1.Time{Time: s.Created}
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.User = s.User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.Labels = s.Labels
	return mutate.ConfigFile(img, cf)
}

// skeleton lists the layer's files: a distroless-like root with the binary.
func skeleton(binPath string, bin []byte) []file {
	return []file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, uid: 65532, gid: 65532, dir: true},
		{name: "root/", mode: 0o700, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: binPath, mode: 0o755, body: bin},
	}
}

// layerOf writes files, in order and all with one timestamp, into an
// uncompressed tar and returns it as a gzip-compressed layer.
func layerOf(files []file, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid,
			ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.body)),
		}
		if f.dir {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}
