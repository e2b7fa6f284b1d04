package datapath

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// MapFill is how full one of the maps that bound acceleration is: past its
// capacity new connections stay on TCP (counted in Counters.MapErrors).
type MapFill struct {
	Name     string // sockhash, receivers, pending
	Entries  int
	Capacity int
}

// MapFill counts the entries of the maps sized by Options.MaxConnections.
func (d *Datapath) MapFill() ([]MapFill, error) {
	var fills []MapFill
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{{"sockhash", d.objs.SockhopSocks}, {"receivers", d.objs.SockhopRx}, {"pending", d.objs.SockhopPending}} {
		n, err := countEntries(m.m)
		if err != nil {
			return fills, fmt.Errorf("count %s entries: %w", m.name, err)
		}
		fills = append(fills, MapFill{Name: m.name, Entries: n, Capacity: int(m.m.MaxEntries())})
	}
	return fills, nil
}

// countEntries walks a map's keys (a sockhash yields no values to user
// space that matter here).
func countEntries(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	n := 0
	iter := m.Iterate()
	for iter.Next(&key, &val) {
		n++
	}
	return n, iter.Err()
}
