package main

import (
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
)

func TestFlagDefaults(t *testing.T) {
	t.Setenv("NODE_NAME", "node-from-env")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c := bindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"node-name":                 "node-from-env",
		"namespace-label-key":       "sockhop.dev/accelerate",
		"namespace-label-value":     "enabled",
		"bpffs-dir":                 "/sys/fs/bpf/sockhop",
		"proxy-uids":                "1337,2102,5678",
		"app-receivers":             "auto",
		"metrics-bind-address":      ":9962",
		"health-probe-bind-address": ":9963",
		"uninstall-on-delete":       "true",
		"cgroup-mount":              "",
		"cgroup-driver":             "",
		"cgroup-root":               "",
	} {
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("flag --%s missing", name)
			continue
		}
		if f.Value.String() != want {
			t.Errorf("--%s = %q, want %q", name, f.Value.String(), want)
		}
	}
	for _, name := range []string{"zap-log-level", "zap-devel", "zap-encoder"} {
		if fs.Lookup(name) == nil {
			t.Errorf("controller-runtime's --%s missing", name)
		}
	}
}

func TestFlagsParse(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c := bindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err == nil {
		t.Error("no node name accepted")
	}
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	c = bindFlags(fs)
	if err := fs.Parse([]string{"--node-name=n1", "--cgroup-driver=systemd", "--cgroup-root=/custom", "--uninstall-on-delete=false"}); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.nodeName != "n1" || c.cgroup.Driver != "systemd" || c.cgroup.CgroupRoot != "/custom" || c.uninstallOnDelete {
		t.Errorf("parsed %+v", c)
	}
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	c = bindFlags(fs)
	if err := fs.Parse([]string{"--node-name=n1", "--app-receivers=maybe"}); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err == nil {
		t.Error("--app-receivers=maybe accepted")
	}
}

func TestParseUIDs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint32
		bad  bool
	}{
		{in: "1337,2102,5678", want: []uint32{1337, 2102, 5678}},
		{in: " 1337 , 0 ", want: []uint32{1337, 0}},
		{in: "", want: []uint32{}},
		{in: "1337,x", bad: true},
		{in: "1337,,1", bad: true},
		{in: "4294967296", bad: true},
	} {
		got, err := parseUIDs(tc.in)
		if (err != nil) != tc.bad || !tc.bad && !slices.Equal(got, tc.want) {
			t.Errorf("parseUIDs(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
	if got, _ := parseUIDs(""); got == nil {
		t.Error(`parseUIDs("") is nil: the datapath would read it as "use the defaults"`)
	}
}

type fakeConverged struct{ err error }

func (f *fakeConverged) Ready() error { return f.err }

func TestReadiness(t *testing.T) {
	fe := &datapath.FeatureError{Feature: "program type sk_msg", Err: errors.New("invalid argument")}
	rec := &fakeConverged{err: errors.New("first convergence not done yet")}
	check := readiness(nil, rec)
	if err := check(nil); err == nil || !strings.Contains(err.Error(), "first convergence") {
		t.Errorf("before the first convergence: %v", err)
	}
	rec.err = nil
	if err := check(nil); err != nil {
		t.Errorf("after the first convergence: %v", err)
	}
	// Ready is not for ever: the check follows the reconciler.
	rec.err = errors.New("cannot read the datapath's pins: gone")
	if err := check(nil); err == nil || !strings.Contains(err.Error(), "pins") {
		t.Errorf("pins unreadable after being ready: %v", err)
	}
	err := readiness(fe, &fakeConverged{})(nil)
	if err == nil || !strings.Contains(err.Error(), "degraded, accelerating nothing: kernel lacks program type sk_msg") {
		t.Errorf("degraded: %v", err)
	}
	if !errors.Is(err, datapath.ErrNotSupported) {
		t.Errorf("degraded reason does not wrap datapath.ErrNotSupported: %v", err)
	}
	if err := readiness(nil, nil)(nil); err == nil {
		t.Error("no reconciler, yet ready")
	}
}
