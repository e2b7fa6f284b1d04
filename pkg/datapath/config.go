package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// The options a datapath was loaded with are pinned next to its maps, so
// that Open (status, a standalone attach next to the agent) uses and shows
// what is installed instead of imposing its own defaults.

const (
	configMap = "sockhop_config"
	progsDir  = "progs"
)

// pinnedConfig is the value of the sockhop_config map (user space only).
type pinnedConfig struct {
	ProxyUIDs    [4]uint32
	AppReceivers uint32
	BacklogLimit uint32 // 0: unbounded
	Unguarded    uint32
	NoSyscall    uint32
}

func configSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name: configMap, Type: ebpf.Array, KeySize: 4, MaxEntries: 1,
		ValueSize: 32, Pinning: ebpf.PinByName,
	}
}

func toPinned(o Options) pinnedConfig {
	c := pinnedConfig{ProxyUIDs: [4]uint32{noUID, noUID, noUID, noUID}}
	copy(c.ProxyUIDs[:], o.ProxyUIDs)
	if o.AppReceivers {
		c.AppReceivers = 1
	}
	if o.BacklogLimit > 0 {
		c.BacklogLimit = uint32(o.BacklogLimit)
	}
	if o.Unguarded {
		c.Unguarded = 1
	}
	if o.NoSyscallGuard {
		c.NoSyscall = 1
	}
	return c
}

func fromPinned(pinDir string, c pinnedConfig) Options {
	o := Options{PinDir: pinDir, AppReceivers: c.AppReceivers != 0, BacklogLimit: int(c.BacklogLimit), ProxyUIDs: []uint32{},
		Unguarded: c.Unguarded != 0, NoSyscallGuard: c.NoSyscall != 0}
	if o.BacklogLimit == 0 {
		o.BacklogLimit = -1
	}
	for _, u := range c.ProxyUIDs {
		if u != noUID {
			o.ProxyUIDs = append(o.ProxyUIDs, u)
		}
	}
	return o
}

// record pins this process's programs and options: the installed datapath
// is now the one Load built.
func (d *Datapath) record() error {
	m, err := ebpf.NewMapWithOptions(configSpec(), ebpf.MapOptions{PinPath: filepath.Join(d.opts.PinDir, mapsDir)})
	if err != nil {
		return fmt.Errorf("open config map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), toPinned(d.opts)); err != nil {
		return fmt.Errorf("record options: %w", err)
	}
	dir := filepath.Join(d.opts.PinDir, progsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for name, p := range map[string]*ebpf.Program{
		"sockops": d.objs.SockhopSockops, "sk_msg": d.objs.SockhopMsg,
		"recv": d.objs.SockhopRecv, "sys_enter": d.objs.SockhopSysenter,
		"close": d.objs.SockhopClose, "ready": d.objs.SockhopReady,
		"sockopt": d.objs.SockhopSockopt, "uring": d.objs.SockhopUring,
		"tsplice": d.objs.SockhopTsplice, "tsendf": d.objs.SockhopTsendf, "trfrom": d.objs.SockhopTrfrom,
		"trmsg": d.objs.SockhopTrmsg, "trmmsg": d.objs.SockhopTrmmsg, "tgetopt": d.objs.SockhopTgetopt,
	} {
		pin := filepath.Join(dir, name)
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace program pin %s: %w", pin, err)
		}
		if err := p.Pin(pin); err != nil {
			return fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	// The function guard's, where this datapath uses it; else none, so
	// that Open does not attach one this datapath does not use.
	for _, g := range fnGuards {
		pin := filepath.Join(dir, g.pin)
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace program pin %s: %w", pin, err)
		}
		if d.fn == nil {
			continue
		}
		if err := (*g.prog(d.fn)).Pin(pin); err != nil {
			return fmt.Errorf("pin program %s: %w", g.pin, err)
		}
	}
	return nil
}

// Options are the options this datapath runs with (for Open: those it was
// installed with).
func (d *Datapath) Options() Options { return d.opts }

// Build identifies the datapath in use: the tags of its programs (a hash of
// their instructions, so two builds of sockhop differ when their BPF does)
// and the options they run with.
type Build struct {
	SockopsTag string
	MsgTag     string
	Options    Options
	// NodeTracepoints: the node-wide tracepoints are attached (only while
	// a pod is attached or a paired socket is open).
	NodeTracepoints bool
	// SyscallGuard: how the syscall guard is attached ("kernel
	// functions", "per-syscall tracepoints", "sys_enter"), "" while it is
	// not.
	SyscallGuard string
}

// Build reports the programs and options in use.
func (d *Datapath) Build() (Build, error) {
	b := Build{Options: d.opts, NodeTracepoints: d.GuardsAttached(), SyscallGuard: d.SyscallGuard()}
	for _, p := range []struct {
		prog *ebpf.Program
		tag  *string
	}{{d.objs.SockhopSockops, &b.SockopsTag}, {d.objs.SockhopMsg, &b.MsgTag}} {
		if p.prog == nil {
			continue
		}
		info, err := p.prog.Info()
		if err != nil {
			return b, fmt.Errorf("program info: %w", err)
		}
		*p.tag = info.Tag
	}
	return b, nil
}
