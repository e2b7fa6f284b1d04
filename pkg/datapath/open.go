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

// Open uses the datapath installed in pinDir as it is: its pinned maps,
// programs and options; nothing is loaded or re-linked. For `sockhop status`
// and for attaching next to a running agent without changing its options.
func Open(pinDir string) (*Datapath, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(filepath.Join(pinDir, mapsDir)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", pinDir, ErrNotInstalled)
	}
	d := &Datapath{opts: Options{PinDir: pinDir}}
	maps := filepath.Join(pinDir, mapsDir)
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{
		{"sockhop_socks", &d.objs.SockhopSocks},
		{"sockhop_state", &d.objs.SockhopState},
		{"sockhop_pending", &d.objs.SockhopPending},
		{"sockhop_pods", &d.objs.SockhopPods},
		{"sockhop_podips", &d.objs.SockhopPodips},
		{"sockhop_stats", &d.objs.SockhopStats},
		{"sockhop_rx", &d.objs.SockhopRx},
		{"sockhop_hazard", &d.objs.SockhopHazard},
		{"sockhop_trust", &d.objs.SockhopTrust},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(maps, m.name), nil)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", m.name, err)
		}
		*m.dst = mp
	}
	// Maps of the abort (bpf/lib/abort.h), the per-pod counters
	// (bpf/lib/podst.h) and the short-lived streaks: absent where a sockhop from before them is
	// installed.
	for name, dst := range map[string]**ebpf.Map{
		"sockhop_strand": &d.objs.SockhopStrand, "sockhop_aborts": &d.objs.SockhopAborts,
		"sockhop_podst": &d.objs.SockhopPodst, "sockhop_short": &d.objs.SockhopShort,
	} {
		if mp, err := ebpf.LoadPinnedMap(filepath.Join(maps, name), nil); err == nil {
			*dst = mp
		}
	}
	cfg, err := ebpf.LoadPinnedMap(filepath.Join(maps, configMap), nil)
	if err == nil {
		var c pinnedConfig
		err = cfg.Lookup(uint32(0), &c)
		cfg.Close()
		if err == nil {
			d.opts = fromPinned(pinDir, c)
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("read installed options: %w", err)
	}
	for name, dst := range map[string]**ebpf.Program{
		"sockops": &d.objs.SockhopSockops, "sk_msg": &d.objs.SockhopMsg,
		"recv": &d.objs.SockhopRecv, "sys_enter": &d.objs.SockhopSysenter,
	} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, progsDir, name), nil)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", name, err)
		}
		*dst = p
	}
	// Programs absent where a sockhop from before them is installed.
	for name, dst := range map[string]**ebpf.Program{
		"close": &d.objs.SockhopClose, "ready": &d.objs.SockhopReady, "sockopt": &d.objs.SockhopSockopt,
		"uring":   &d.objs.SockhopUring,
		"tsplice": &d.objs.SockhopTsplice, "tsendf": &d.objs.SockhopTsendf, "trfrom": &d.objs.SockhopTrfrom,
		"trmsg": &d.objs.SockhopTrmsg, "trmmsg": &d.objs.SockhopTrmmsg, "tgetopt": &d.objs.SockhopTgetopt,
	} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, progsDir, name), nil)
		switch {
		case err == nil:
			*dst = p
		case !errors.Is(err, os.ErrNotExist):
			d.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", name, err)
		}
	}
	if d.fn, err = openFnGuard(pinDir); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}
