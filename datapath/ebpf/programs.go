package ebpf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"
)

// The programs are pinned too, under <PinPath>/progs, with the build they
// came from (a digest of the embedded object) in a pinned map beside them:
// a datapath of the same build opens them instead of loading them again,
// which spares a restart the verifier (about 40 ms of CPU, while the agent
// decodes its state file on every core).

const progsDir = "progs"

// buildMap holds the digest of the object whose programs are pinned.
var buildMap = &ebpf.MapSpec{
	Name:       "build",
	Type:       ebpf.Array,
	KeySize:    4,
	ValueSize:  sha256.Size,
	MaxEntries: 1,
	Pinning:    ebpf.PinByName,
}

// thisBuild is the digest of the programs this binary carries.
var thisBuild = sha256.Sum256(_LbBytes)

// programs returns the program fields of p by their section names.
func programs(p *lbPrograms) map[string]**ebpf.Program {
	v := reflect.ValueOf(p).Elem()
	out := make(map[string]**ebpf.Program, v.NumField())
	for i := range v.NumField() {
		out[v.Type().Field(i).Tag.Get("ebpf")] = v.Field(i).Addr().Interface().(**ebpf.Program)
	}
	return out
}

// loadPrograms fills d.objs' programs: the pinned ones when they are this
// build's, else the spec's, loaded and pinned. It reports whether it
// reused the pinned ones.
func (d *Datapath) loadPrograms(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (bool, error) {
	build, err := ebpf.NewMapWithOptions(buildMap, ebpf.MapOptions{PinPath: d.opts.PinPath})
	if err != nil {
		return false, fmt.Errorf("opening the build map: %w", err)
	}
	defer build.Close()
	dir := filepath.Join(d.opts.PinPath, progsDir)
	var pinned [sha256.Size]byte
	if err := build.Lookup(uint32(0), &pinned); err != nil {
		return false, fmt.Errorf("reading the build map: %w", err)
	}
	if pinned == thisBuild {
		err := openPinned(&d.objs.lbPrograms, dir)
		if err == nil {
			err = usesMaps(&d.objs)
		}
		if err == nil {
			return true, nil
		}
		d.objs.lbPrograms.Close()
		d.objs.lbPrograms = lbPrograms{}
	}
	if err := spec.LoadAndAssign(&d.objs.lbPrograms, opts); err != nil {
		return false, fmt.Errorf("loading the eBPF programs: %w", err)
	}
	// The build is unset while the pins change, so that pins of two builds
	// are never taken for one.
	if err := build.Put(uint32(0), [sha256.Size]byte{}); err != nil {
		return false, fmt.Errorf("writing the build map: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	for name, p := range programs(&d.objs.lbPrograms) {
		pin := filepath.Join(dir, name)
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("removing the pinned program %s: %w", name, err)
		}
		if err := (*p).Pin(pin); err != nil {
			return false, fmt.Errorf("pinning the program %s: %w", name, err)
		}
	}
	if err := build.Put(uint32(0), thisBuild); err != nil {
		return false, fmt.Errorf("writing the build map: %w", err)
	}
	return false, nil
}

// openPinned opens the programs pinned in dir into p; on an error, p holds
// those it opened.
func openPinned(p *lbPrograms, dir string) error {
	for name, f := range programs(p) {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, name), nil)
		if err != nil {
			return err
		}
		*f = prog
	}
	return nil
}

// usesMaps checks that the programs use o's maps and no other map of the
// same name (as pinned programs would, whose maps' pins were removed and
// created again).
func usesMaps(o *lbObjects) error {
	ours := map[ebpf.MapID]bool{}
	names := map[string]bool{}
	v := reflect.ValueOf(&o.lbMaps).Elem()
	for i := range v.NumField() {
		info, err := v.Field(i).Interface().(*ebpf.Map).Info()
		if err != nil {
			return err
		}
		id, _ := info.ID()
		ours[id] = true
		names[info.Name] = true
	}
	for name, p := range programs(&o.lbPrograms) {
		info, err := (*p).Info()
		if err != nil {
			return err
		}
		ids, _ := info.MapIDs()
		for _, id := range ids {
			if ours[id] {
				continue
			}
			m, err := ebpf.NewMapFromID(id)
			if err != nil {
				return err
			}
			mi, err := m.Info()
			m.Close()
			if err != nil {
				return err
			}
			if names[mi.Name] {
				return fmt.Errorf("program %s uses a map %s that is not the pinned one", name, mi.Name)
			}
		}
	}
	return nil
}
