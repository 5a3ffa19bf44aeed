package ebpf

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
)

var _ datapath.Stamper = (*Datapath)(nil)

// stampMap is the pinned map that holds the caller's stamp: one value, a
// little-endian length and up to datapath.MaxStamp bytes. No program reads
// it; it is pinned beside the maps it vouches for, and goes with them.
var stampMap = &ebpf.MapSpec{
	Name:       "stamp",
	Type:       ebpf.Array,
	KeySize:    4,
	ValueSize:  4 + datapath.MaxStamp,
	MaxEntries: 1,
	Pinning:    ebpf.PinByName,
}

// openStamp opens the pinned stamp map, creating it if there is none.
func openStamp(pinPath string) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(stampMap, ebpf.MapOptions{PinPath: pinPath})
	if err != nil {
		return nil, fmt.Errorf("opening the stamp map: %w", err)
	}
	return m, nil
}

// Stamp implements datapath.Stamper.
func (d *Datapath) Stamp(ctx context.Context, stamp []byte) error {
	if err := datapath.CheckStamp(stamp); err != nil {
		return err
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.mu.Unlock()
	var v [4 + datapath.MaxStamp]byte
	binary.LittleEndian.PutUint32(v[:4], uint32(len(stamp)))
	copy(v[4:], stamp)
	if err := d.stamp.Put(uint32(0), v); err != nil {
		return fmt.Errorf("writing the stamp: %w", err)
	}
	return nil
}

// Stamped implements datapath.Stamper.
func (d *Datapath) Stamped(ctx context.Context) ([]byte, error) {
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	var v [4 + datapath.MaxStamp]byte
	if err := d.stamp.Lookup(uint32(0), &v); err != nil {
		return nil, fmt.Errorf("reading the stamp: %w", err)
	}
	n := binary.LittleEndian.Uint32(v[:4])
	if n == 0 || n > datapath.MaxStamp {
		return nil, nil
	}
	return v[4 : 4+n], nil
}
