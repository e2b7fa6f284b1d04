package datapath_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// The node-wide tracepoints run only while the node has something to guard
// (guards.go): not after a load with no pod attached; from the first
// attach; still after the pod is detached while its paired connections
// run (they still need the guard), and until they have closed; and again
// at the next attach, where a new connection switches to redirect (which
// needs the receive tracepoint to have seen its receiver read).
func TestNodeTracepointsOnlyWhileGuarding(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 64})
	wantGuards(t, e, false, "loaded, no pod attached")
	release := func(want bool, when string) {
		t.Helper()
		attached, err := e.dp.ReleaseIdleGuards()
		if err != nil {
			t.Fatal(err)
		}
		if attached != want {
			t.Fatalf("%s: ReleaseIdleGuards says attached=%v, want %v", when, attached, want)
		}
		wantGuards(t, e, want, when)
	}
	release(false, "released with nothing to guard")

	p := e.pod("app", true)
	wantGuards(t, e, true, "a pod attached")
	release(true, "released with a pod attached")

	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	c := e.startClient(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 4, Parallel: 4, Bytes: 64 << 20, MaxWrite: 64 << 10})
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for pairedSockets(t, e) != 8 {
		if time.Now().After(deadline) {
			t.Fatalf("want 8 paired sockets while 4 streams run, have %d", pairedSockets(t, e))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := e.dp.Detach(p.cgroup); err != nil {
		t.Fatal(err)
	}
	release(true, "released with the pod detached and its connections open")
	if !peerRunning(t, c.PID()) {
		t.Fatal("the streams ended before the release; make them longer")
	}
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, 4, 64<<20)
	waitMapsEmpty(t, e)
	release(false, "released once the detached pod's connections closed")

	before := e.counters()
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	wantGuards(t, e, true, "the pod attached again")
	mustOK(t, e.client(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 1, Parallel: 1, Bytes: 4 << 20, MaxWrite: 16 << 10}), 1, 4<<20)
	if d := diff(before, e.counters()); d.paired != 2 || d.switches == 0 || d.redirBytes == 0 {
		t.Fatalf("after the new attach, a stream was not paired and redirected: %v", d)
	}
}

// The agent lets the node-wide tracepoints go when nothing is left to
// guard, and attaches them again with the next pod, which may come at once.
// The kernel frees a released link in a worker, a moment later: until then a
// tracepoint refuses the same program again (EEXIST), and the syscall guard
// fell back to sys_enter for the datapath's life (within 0–24 cycles, five
// runs). An fentry program's trampoline does the same (EBUSY): the function
// guard fell back to the per-syscall tracepoints at cycle 57 on Debian's
// 6.12.
func TestGuardsAttachRightAfterRelease(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 64})
	p := e.pod("app", true)
	for i := 0; i < 100; i++ {
		if err := e.dp.Detach(p.cgroup); err != nil {
			t.Fatal(err)
		}
		if attached, err := e.dp.ReleaseIdleGuards(); err != nil || attached {
			t.Fatalf("cycle %d: release with nothing to guard: attached=%v, %v", i, attached, err)
		}
		if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
			t.Fatal(err)
		}
		if got, want := e.dp.SyscallGuard(), defaultGuardForm(t); got != want {
			t.Fatalf("cycle %d: the syscall guard is attached as %q (%v), want %q", i, got, e.dp.SyscallGuardFallback(), want)
		}
	}
	wantGuards(t, e, true, "after 100 cycles")
}

func pairedSockets(t *testing.T, e *env) int {
	t.Helper()
	fills, err := e.dp.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fills {
		if f.Name == "receivers" {
			return f.Entries
		}
	}
	t.Fatalf("no receivers map in %+v", fills)
	return 0
}

// The syscall guard's forms, as SyscallGuard names them.
const (
	formFn       = "kernel functions"
	formTP       = "per-syscall tracepoints"
	formSysEnter = "sys_enter"
)

// defaultGuardForm is the form of the syscall guard with the default
// options on this kernel: on kernel functions where it runs fentry
// programs, else the per-syscall tracepoints (this project's CI host). A
// kernel that refuses them must say so by a permission or support error,
// not by a verifier error (a broken program would otherwise pass for a
// kernel that refuses trampolines).
func defaultGuardForm(t *testing.T) string {
	t.Helper()
	err := datapath.ProbeFunctionGuard()
	if err == nil {
		return formFn
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("the function guard does not load, and not for want of trampolines: %v", err)
	}
	return formTP
}

// guardProgs are the pinned programs of the node-wide tracepoints, with the
// syscall guard in the given form.
func guardProgs(form string) []string {
	names := []string{"recv", "close", "ready"}
	switch form {
	case formFn:
		return append(names, "fsplice", "frecv", "frecvp", "fgetopt")
	case formSysEnter:
		return append(names, "uring", "sys_enter")
	}
	return append(names, "uring", "tsplice", "tsendf", "trfrom", "trmsg", "trmmsg", "tgetopt")
}

// wantGuards checks the pins and, in the kernel, the links that run the
// datapath's node-wide tracepoint programs, with the syscall guard in its
// default form on this kernel.
func wantGuards(t *testing.T, e *env, want bool, when string) {
	t.Helper()
	wantGuardProgs(t, e, want, defaultGuardForm(t), when)
}

func wantGuardProgs(t *testing.T, e *env, want bool, form, when string) {
	t.Helper()
	progs := map[ebpf.ProgramID]string{}
	for _, name := range append(guardProgs(formTP), "sys_enter") {
		progs[pinnedProgID(t, e, name, when)] = name
	}
	for _, name := range guardProgs(formFn)[3:] {
		// Pinned only by a datapath that uses them.
		if form == formFn || pinned(e, name) {
			progs[pinnedProgID(t, e, name, when)] = name
		}
	}
	expected := map[string]bool{}
	for _, name := range guardProgs(form) {
		expected[name] = true
	}
	var running, unexpected []string
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue // gone meanwhile
		}
		if name, ok := progs[info.Program]; ok {
			if want && expected[name] {
				running = append(running, name)
			} else {
				unexpected = append(unexpected, name)
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if want && len(running) != len(expected) || len(unexpected) != 0 {
		t.Fatalf("%s: the kernel runs %v (and %v) of the node-wide tracepoint programs, want %v", when, running, unexpected,
			map[bool]any{true: guardProgs(form), false: "none"}[want])
	}
	if got := e.dp.GuardsAttached(); got != want {
		t.Fatalf("%s: GuardsAttached() = %v, want %v", when, got, want)
	}
	// The function guard's link pins: all of them in that form, none in
	// another (their programs are unpinned then, so the kernel's links
	// above cannot show a leftover).
	for _, name := range guardProgs(formFn)[3:] {
		_, err := os.Stat(filepath.Join(e.pinDir, "links", "fn-"+name))
		if has := err == nil; has != (want && form == formFn) {
			t.Fatalf("%s: link pin fn-%s present=%v with the guard attached=%v as %q", when, name, has, want, form)
		}
	}
	wantMode := map[bool]string{true: form, false: ""}[want]
	if got := e.dp.SyscallGuard(); got != wantMode {
		t.Fatalf("%s: SyscallGuard() = %q, want %q", when, got, wantMode)
	}
}

func pinned(e *env, prog string) bool {
	_, err := os.Stat(filepath.Join(e.pinDir, "progs", prog))
	return err == nil
}

func pinnedProgID(t *testing.T, e *env, name, when string) ebpf.ProgramID {
	t.Helper()
	p, err := ebpf.LoadPinnedProgram(filepath.Join(e.pinDir, "progs", name), nil)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: program %s is not pinned", when, name)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatalf("%s: no id for program %s", when, name)
	}
	return id
}

// The syscall guard's forms: on kernel functions by default where the
// kernel runs fentry programs, else (and with SyscallGuardTracepoints) the
// per-syscall tracepoints, sys_enter with SyscallGuardBTF; a datapath loaded
// with another form replaces the links of the one before, and each guards
// a splicer.
func TestSyscallGuardForms(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	def := defaultGuardForm(t)
	wantGuardProgs(t, e, true, def, "loaded with the defaults")
	btf, tps := e.opts, e.opts
	btf.SyscallGuardBTF = true
	tps.SyscallGuardTracepoints = true
	for i, step := range []struct {
		opts datapath.Options
		form string
		when string
	}{
		{tps, formTP, "loaded again with SyscallGuardTracepoints"},
		{btf, formSysEnter, "loaded again with SyscallGuardBTF"},
		{e.opts, def, "loaded again with the defaults"},
	} {
		e.reload(t, step.opts)
		wantGuardProgs(t, e, true, step.form, step.when)
		// The guard in this form sees a splicing reader (a container of
		// its own each time: the first is learnt and not paired again).
		addr := fmt.Sprintf("127.0.0.1:%d", 8080+i)
		e.server(e.container(p, fmt.Sprint("reader", i)), 0, testbed.PeerSpec{Mode: testbed.ModeSpliceSink, Listen: []string{addr}})
		before := e.counters()
		res := e.client(p, 0, testbed.PeerSpec{Mode: testbed.ModeSendReport, Target: addr, Bytes: 1 << 20, MaxWrite: 64 << 10})
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if d := diff(before, e.counters()); d.unsafeRx == 0 {
			t.Fatalf("%s: the splicing reader was not seen: %v", step.when, d)
		}
	}
}
