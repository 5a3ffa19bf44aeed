package ebpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// dump is every configuration map, read at once.
type dump struct {
	owned
	backends map[uint32]lbBackend
}

func readDump(m *lbMaps) (*dump, error) {
	var d dump
	var err error
	if d.meta, err = readAll[uint32, lbSvcInfo](m.SvcMeta); err != nil {
		return nil, err
	}
	if d.ports, err = readAll[lbPortKey, lbPortInfo](m.PortMeta); err != nil {
		return nil, err
	}
	if d.addrs, err = readAll[lbAddrKey, lbAddr](m.SvcAddrs); err != nil {
		return nil, err
	}
	if d.frontends, err = readAll[lbSvcKey, lbSvcVal](m.Services); err != nil {
		return nil, err
	}
	if d.slots, err = readAll[lbSlotKey, lbSlotVal](m.Slots); err != nil {
		return nil, err
	}
	if d.ranges, err = readAll[lbRangeKey, uint32](m.SrcRanges); err != nil {
		return nil, err
	}
	if d.backends, err = readAll[uint32, lbBackend](m.Backends); err != nil {
		return nil, err
	}
	return &d, nil
}

const batchSize = 4096

// readAll reads a whole map, in batches where the map type allows.
func readAll[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading map %s: %w", name(m), err)
		}
	}
	clear(out)
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading map %s: %w", name(m), err)
	}
	return out, nil
}

// putAll writes entries, in batches where the map type allows.
func putAll[K comparable, V any](m *ebpf.Map, entries map[K]V) error {
	if len(entries) == 0 {
		return nil
	}
	keys := make([]K, 0, len(entries))
	vals := make([]V, 0, len(entries))
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		_, err := m.BatchUpdate(keys[:n], vals[:n], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("writing map %s: %w", name(m), err)
		}
		keys, vals = keys[n:], vals[n:]
	}
	for i := range keys {
		if err := m.Put(keys[i], vals[i]); err != nil {
			return fmt.Errorf("writing map %s: %w", name(m), err)
		}
	}
	return nil
}

// deleteAll deletes keys; keys already gone are fine.
func deleteAll[K comparable](m *ebpf.Map, keys []K) error {
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting from map %s: %w", name(m), err)
		}
	}
	return nil
}

func name(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return m.String()
}

// change is what one map gains and loses in an Apply.
type change[K comparable, V comparable] struct {
	put map[K]V
	del map[K]struct{}
	// grow is the number of entries the map gains (negative: loses).
	grow int
}

func newChange[K comparable, V comparable]() *change[K, V] {
	return &change[K, V]{put: map[K]V{}, del: map[K]struct{}{}}
}

// add records the move of one owner's entries from before to after.
func (c *change[K, V]) add(before, after map[K]V) {
	for k, v := range after {
		old, had := before[k]
		if !had {
			c.grow++
		}
		if !had || old != v {
			c.put[k] = v
			delete(c.del, k)
		}
	}
	for k := range before {
		if _, keep := after[k]; !keep {
			c.grow--
			if _, put := c.put[k]; !put {
				c.del[k] = struct{}{}
			}
		}
	}
}

// drop records deleting entries nobody owns, unless another owner writes
// them in the same Apply.
func (c *change[K, V]) drop(orphans map[K]V) {
	for k := range orphans {
		if _, put := c.put[k]; put {
			c.grow-- // the put overwrites instead of adding
			continue
		}
		c.del[k] = struct{}{}
		c.grow--
	}
}

func (c *change[K, V]) deleted() []K {
	out := make([]K, 0, len(c.del))
	for k := range c.del {
		out = append(out, k)
	}
	return out
}
