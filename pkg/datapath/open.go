package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// ErrNotInstalled means there are no sockhop pins in the directory.
var ErrNotInstalled = errors.New("sockhop is not installed here")

// Open opens an installed datapath's pinned maps without loading or
// re-linking anything: for looking (Attachments, Counters, Sockets), as
// `sockhop status` does next to a running agent. Attach and SetPodIPs need
// Load.
func Open(pinDir string) (*Datapath, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(filepath.Join(pinDir, mapsDir)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", pinDir, ErrNotInstalled)
	}
	d := &Datapath{opts: Options{PinDir: pinDir}}
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{
		{"sockhop_socks", &d.objs.SockhopSocks},
		{"sockhop_pods", &d.objs.SockhopPods},
		{"sockhop_podips", &d.objs.SockhopPodips},
		{"sockhop_stats", &d.objs.SockhopStats},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, mapsDir, m.name), ro)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", m.name, err)
		}
		*m.dst = mp
	}
	return d, nil
}
