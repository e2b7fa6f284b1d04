package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The syscall guard in its cheapest form: fentry programs on the kernel
// functions that read a TCP socket without seeing redirected data
// (tcp_splice_read, tcp_getsockopt for zerocopy receive) or that may return
// it short (tcp_bpf_recvmsg with MSG_WAITALL), bpf/fguard.c. A syscall
// tracepoint, in either of its forms, puts every syscall of every process on
// the node on the kernel's traced entry path (+48 ns or more each,
// docs/benchmarks.md); these run only when such a function is called. They
// need BPF trampolines, which some kernels and hypervisors refuse (this
// project's CI host does): there the guard is the syscall tracepoints.

// fnGuardFeature names what the function guard needs of the kernel.
const fnGuardFeature = "fentry programs (BPF trampolines)"

// fnGuard is one fentry program of the guard: its pin (program and link)
// and the function it runs before.
type fnGuard struct {
	pin  string
	fn   string
	prog func(*fguardPrograms) **ebpf.Program
}

var fnGuards = []fnGuard{
	{"fsplice", "tcp_splice_read", func(p *fguardPrograms) **ebpf.Program { return &p.SockhopFsplice }},
	{"frecv", "tcp_bpf_recvmsg", func(p *fguardPrograms) **ebpf.Program { return &p.SockhopFrecv }},
	{"frecvp", "tcp_bpf_recvmsg_parser", func(p *fguardPrograms) **ebpf.Program { return &p.SockhopFrecvp }},
	{"fgetopt", "tcp_getsockopt", func(p *fguardPrograms) **ebpf.Program { return &p.SockhopFgetopt }},
}

// fnLinkPrefix starts the link pins of the function guard.
const fnLinkPrefix = "fn-"

// maps are the datapath's maps by name, for the objects that share them.
func (o *sockhopObjects) maps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		sockhopMapSockhopSocks: o.SockhopSocks, sockhopMapSockhopState: o.SockhopState,
		sockhopMapSockhopPending: o.SockhopPending, sockhopMapSockhopPods: o.SockhopPods,
		sockhopMapSockhopPodips: o.SockhopPodips, sockhopMapSockhopStats: o.SockhopStats,
		sockhopMapSockhopRx: o.SockhopRx, sockhopMapSockhopHazard: o.SockhopHazard,
		sockhopMapSockhopTrust: o.SockhopTrust, sockhopMapSockhopStrand: o.SockhopStrand,
		sockhopMapSockhopAborts: o.SockhopAborts, sockhopMapSockhopPodst: o.SockhopPodst,
		sockhopMapSockhopShort: o.SockhopShort,
	}
}

// sharedMaps picks, from maps (the datapath's, by name), every map a program
// of spec uses, and sizes spec's to match: an object loaded next to the
// datapath (the abort iterator, the function guard) works on its maps. A
// map used and not given is an error: a map of its own would be a guard or
// an abort that sees nothing the datapath does. nil maps: none (a probe,
// on maps of its own).
func sharedMaps(spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	replace := map[string]*ebpf.Map{}
	if maps == nil {
		return replace, nil
	}
	for _, p := range spec.Programs {
		for _, ins := range p.Instructions {
			name := ins.Reference()
			if !ins.IsLoadFromMap() || name == "" {
				continue
			}
			m := maps[name]
			if m == nil {
				return nil, fmt.Errorf("program %s uses map %s, which the datapath does not share", p.Name, name)
			}
			spec.Maps[name].MaxEntries = m.MaxEntries() // sized by Options
			replace[name] = m
		}
	}
	return replace, nil
}

// loadFnGuard loads the function guard on the datapath's maps (nil: its
// own, for the probe).
func loadFnGuard(maps map[string]*ebpf.Map) (*fguardPrograms, error) {
	spec, err := loadFguard()
	if err != nil {
		return nil, fmt.Errorf("parse the function guard object: %w", err)
	}
	replace, err := sharedMaps(spec, maps)
	if err != nil {
		return nil, err
	}
	var progs fguardPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		if errors.Is(err, unix.EPERM) {
			// Not cilium/ebpf's guess (a memlock limit): a kernel or a
			// hypervisor that forbids trampolines answers so.
			return nil, featureErr(fnGuardFeature, fmt.Errorf("the kernel refuses to load them: %w", unix.EPERM))
		}
		return nil, featureErr(fnGuardFeature, verifierError(err))
	}
	return &progs, nil
}

// ProbeFunctionGuard says whether this kernel runs the syscall guard on
// kernel functions (fentry): it loads the programs on maps of their own,
// attaches each (a kernel may load a trampoline program and refuse to
// attach it) and unloads them. Without it the guard is the syscall
// tracepoints, which every syscall on the node pays for while pods are
// accelerated.
func ProbeFunctionGuard() error {
	p, err := loadFnGuard(nil)
	if err != nil {
		return err
	}
	defer p.Close()
	for _, g := range fnGuards {
		l, err := attachFentry(*g.prog(p))
		if err != nil {
			return featureErr(fnGuardFeature, fmt.Errorf("attach the fentry program on %s: %w", g.fn, err))
		}
		l.Close()
	}
	return nil
}

// openFnGuard opens the function guard's pinned programs, or returns nil
// where the installed datapath has none (trampolines refused, a form forced,
// or a sockhop from before them).
func openFnGuard(pinDir string) (*fguardPrograms, error) {
	var progs fguardPrograms
	for i, g := range fnGuards {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, progsDir, g.pin), nil)
		if i == 0 && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			progs.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", g.pin, err)
		}
		*g.prog(&progs) = p
	}
	return &progs, nil
}

// fnTracepoints are the function guard's links, or nil where it is not in
// use.
func (d *Datapath) fnTracepoints() []nodeTracepoint {
	if d.fn == nil {
		return nil
	}
	var tps []nodeTracepoint
	for _, g := range fnGuards {
		tps = append(tps, nodeTracepoint{pin: fnLinkPrefix + g.pin, prog: *g.prog(d.fn),
			what: "the fentry program on " + g.fn})
	}
	return tps
}

// attachFentry attaches an fentry program. A link of the same program that
// was just let go (ReleaseIdleGuards, then an Attach) is freed by a kernel
// worker a moment later; until then the function's trampoline refuses the
// program a second time (EBUSY, bpf_trampoline_link_prog), as a tracepoint
// does (attachEvent).
func attachFentry(prog *ebpf.Program) (link.Link, error) {
	for end := time.Now().Add(2 * time.Second); ; {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(end) {
			return l, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dropFnGuard gives up the function guard for this datapath's life (an
// attach was refused): the guard is the syscall tracepoints. Its programs'
// pins go too, so that Open (the CLI) does not attach it again.
func (d *Datapath) dropFnGuard(err error) {
	if d.fn != nil {
		d.fn.Close()
	}
	d.fn, d.fnErr = nil, err
	for _, g := range fnGuards {
		os.Remove(filepath.Join(d.opts.PinDir, progsDir, g.pin))
	}
}
