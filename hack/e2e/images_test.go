package main

import (
	"archive/tar"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/spoke-proxy/spoke/hack/internal/imagetar"
	"github.com/spoke-proxy/spoke/internal/imagetest"
)

func TestWriteImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "img.tar")
	spec := imagetar.Spec{
		Ref:        busyboxImage,
		Files:      map[string]string{"/bin/busybox": bin},
		Symlinks:   map[string]string{"/bin/sh": "busybox"},
		Dirs:       []string{"/uploads"},
		Entrypoint: []string{"/bin/busybox"},
		Cmd:        []string{"sh"},
	}
	if err := writeImage(path, spec); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(busyboxImage)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("reading the image back by its tag: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !slices.Equal(cfg.Config.Entrypoint, spec.Entrypoint) || !slices.Equal(cfg.Config.Cmd, spec.Cmd) {
		t.Errorf("config = %s/%s %q %q", cfg.OS, cfg.Architecture, cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	got := map[string]string{}
	for n, h := range imagetest.LayerEntries(t, img) {
		got[n] = string(rune(h.Typeflag)) + h.Linkname
	}
	want := map[string]string{"uploads/": string(rune(tar.TypeDir)), "bin/busybox": string(rune(tar.TypeReg)), "bin/sh": string(rune(tar.TypeSymlink)) + "busybox"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("layer entry %s = %q, want %q (all: %q)", k, got[k], v, got)
		}
	}
}
