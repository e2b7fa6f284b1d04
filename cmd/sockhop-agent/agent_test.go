package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/datapath"
)

// These tests run the real sockhop-agent binary as a child process against a
// real kube-apiserver (envtest), on the real kernel, with pods whose cgroups
// the test creates as kubelet would.

var (
	testEnv     *envtest.Environment
	envtestSkip string
	agentBin    string
	kubeconfig  string
)

// testVersion is stamped into the agent the tests run, as the Makefile does.
const testVersion = "v0.0.0-agent-test"

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	flag.Parse() // for testing.Short
	switch {
	case testing.Short():
		envtestSkip = "-short"
	case os.Geteuid() != 0:
		envtestSkip = "needs root: the agent loads BPF programs and the test creates cgroups"
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		envtestSkip = "KUBEBUILDER_ASSETS is unset: export KUBEBUILDER_ASSETS=$(e2e/cluster/build.sh envtest)"
	case cgroups.Mode() != cgroups.Unified && cgroups.Mode() != cgroups.Hybrid:
		envtestSkip = "no cgroup v2 hierarchy"
	}
	if envtestSkip != "" {
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "sockhop-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	agentBin = filepath.Join(tmp, "sockhop-agent")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version="+testVersion, "-o", agentBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sockhop-agent: %v\n%s", err, out)
		return 1
	}
	testEnv = &envtest.Environment{ControlPlaneStopTimeout: time.Minute}
	if _, err := testEnv.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer testEnv.Stop()
	user, err := testEnv.AddUser(envtest.User{Name: "sockhop-agent", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "add envtest user: %v\n", err)
		return 1
	}
	kc, err := user.KubeConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeconfig: %v\n", err)
		return 1
	}
	kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func requireEnvtest(t *testing.T) {
	t.Helper()
	needs.Cluster(t, envtestSkip)
}

// fixture is one simulated node with its own pins and cgroup root.
type fixture struct {
	t        *testing.T
	node     string
	pinDir   string
	mount    string
	cgRoot   string
	resolver *cgroup.Resolver
	client   client.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	requireEnvtest(t)
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	suffix := hex.EncodeToString(b)
	f := &fixture{t: t, node: "node-" + suffix, pinDir: "/sys/fs/bpf/sockhop-test-" + suffix, mount: "/sys/fs/cgroup"}
	if cgroups.Mode() == cgroups.Hybrid {
		f.mount = "/sys/fs/cgroup/unified"
	}
	f.cgRoot = filepath.Join(f.mount, "sockhop-test-"+suffix)
	for _, d := range []string{"kubepods/burstable", "kubepods/besteffort"} {
		if err := os.MkdirAll(filepath.Join(f.cgRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { removeCgroupTree(t, f.cgRoot) })
	t.Cleanup(func() {
		if err := datapath.Uninstall(f.pinDir); err != nil {
			t.Errorf("uninstall %s: %v", f.pinDir, err)
		}
	})
	var err error
	if f.resolver, err = cgroup.NewResolver(cgroup.Options{Mount: f.mount, Driver: cgroup.Cgroupfs, CgroupRoot: filepath.Base(f.cgRoot)}); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if f.client, err = client.New(testEnv.Config, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	return f
}

func removeCgroupTree(t *testing.T, dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

func (f *fixture) namespace() string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "sockhop-agent-test-",
		Labels: map[string]string{"sockhop.dev/accelerate": "enabled"}}}
	if err := f.client.Create(context.Background(), ns); err != nil {
		f.t.Fatal(err)
	}
	return ns.Name
}

func (f *fixture) pods(ns string, count int) []*corev1.Pod {
	var pods []*corev1.Pod
	for i := range count {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%03d", i)},
			Spec:       corev1.PodSpec{NodeName: f.node, Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
		}
		if err := f.client.Create(context.Background(), p); err != nil {
			f.t.Fatal(err)
		}
		ip := fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, QOSClass: corev1.PodQOSBestEffort, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if err := f.client.Status().Update(context.Background(), p); err != nil {
			f.t.Fatal(err)
		}
		pods = append(pods, p)
	}
	return pods
}

func (f *fixture) cgroupDir(p *corev1.Pod) string {
	return f.resolver.PodDir(string(p.UID), cgroup.BestEffort)
}

// agentProc is a running sockhop-agent.
type agentProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	probe   string
	metrics string
	started time.Time
	exited  chan error
	log     string
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (f *fixture) startAgent(env ...string) *agentProc {
	f.t.Helper()
	a := &agentProc{t: f.t, probe: freePort(f.t), metrics: freePort(f.t), exited: make(chan error, 1)}
	a.log = filepath.Join(f.t.TempDir(), "agent.log")
	logf, err := os.Create(a.log)
	if err != nil {
		f.t.Fatal(err)
	}
	a.cmd = exec.Command(agentBin,
		"--node-name="+f.node,
		"--bpffs-dir="+f.pinDir,
		"--cgroup-mount="+f.mount,
		"--cgroup-driver=cgroupfs",
		"--cgroup-root="+filepath.Base(f.cgRoot),
		"--metrics-bind-address="+a.metrics,
		"--health-probe-bind-address="+a.probe,
		"--zap-time-encoding=rfc3339nano",
	)
	a.cmd.Env = append(os.Environ(), append([]string{"KUBECONFIG=" + kubeconfig, "DAEMONSET_NAME=", "POD_NAMESPACE="}, env...)...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.started = time.Now()
	if err := a.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { a.exited <- a.cmd.Wait(); logf.Close() }()
	f.t.Cleanup(func() { a.stop() })
	return a
}

// stop sends SIGTERM, as kubelet does, and waits for the exit.
func (a *agentProc) stop() {
	if a.cmd.ProcessState != nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.exited:
		if err != nil {
			a.t.Errorf("agent exited with %v; log:\n%s", err, a.logText())
		}
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
		a.t.Errorf("agent did not stop on SIGTERM; log:\n%s", a.logText())
	}
}

func (a *agentProc) logText() string {
	b, _ := os.ReadFile(a.log)
	return string(b)
}

// waitReady polls /readyz and returns how long after the start it passed.
func (a *agentProc) waitReady(timeout time.Duration) time.Duration {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + a.probe + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(a.started)
			}
		}
		select {
		case err := <-a.exited:
			a.t.Fatalf("agent exited (%v); log:\n%s", err, a.logText())
		case <-time.After(5 * time.Millisecond):
		}
	}
	a.t.Fatalf("agent not ready after %s; log:\n%s", timeout, a.logText())
	return 0
}

// metric reads one sample from /metrics, e.g. `sockhop_attach_total{result="success"}`.
func (a *agentProc) metric(sample string) (float64, bool) {
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// histogramQuantile estimates a quantile of a histogram from /metrics the
// way Prometheus' histogram_quantile does: linear within the bucket.
func (a *agentProc) histogramQuantile(name string, q float64) time.Duration {
	a.t.Helper()
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	type bucket struct{ le, count float64 }
	var buckets []bucket
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+`_bucket{le="`)
		if !ok {
			continue
		}
		leStr, countStr, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		le, err1 := strconv.ParseFloat(leStr, 64)
		count, err2 := strconv.ParseFloat(countStr, 64)
		if err1 == nil && err2 == nil {
			buckets = append(buckets, bucket{le, count})
		}
	}
	if len(buckets) == 0 || buckets[len(buckets)-1].count == 0 {
		return 0
	}
	rank := q * buckets[len(buckets)-1].count
	lower, below := 0.0, 0.0
	for _, b := range buckets {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return time.Duration(lower * float64(time.Second))
			}
			frac := (rank - below) / (b.count - below)
			return time.Duration((lower + (b.le-lower)*frac) * float64(time.Second))
		}
		lower, below = b.le, b.count
	}
	return 0
}

// procStatus reads a "VmRSS:   1234 kB" field of /proc/<pid>/status in bytes.
func procStatus(t *testing.T, pid int, field string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// cpuTime is the user+system CPU time of a process.
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the ")" that ends the command name; utime and stime are
	// fields 14 and 15 of the whole line.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// TestAgentFigures measures, with 110 pods (kubelet's default maximum per
// node): cgroup created → attached, the agent's memory, its idle CPU and its
// restart convergence time. It prints them; it asserts only correctness,
// never timing.
func TestAgentFigures(t *testing.T) {
	const podCount = 110
	f := newFixture(t)
	ns := f.namespace()
	pods := f.pods(ns, podCount)
	a := f.startAgent()
	a.waitReady(30 * time.Second)

	ro, err := datapath.Open(f.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()

	// All cgroups at once, as on a node that boots with a full pod list.
	created := make(map[string]time.Time, podCount)
	for _, p := range pods {
		d := f.cgroupDir(p)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		created[d] = time.Now()
	}
	var latencies []time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for len(created) > 0 && time.Now().Before(deadline) {
		atts, err := ro.Attachments()
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for _, at := range atts {
			if c, ok := created[at.CgroupPath]; ok {
				latencies = append(latencies, now.Sub(c))
				delete(created, at.CgroupPath)
			}
		}
		// Reading 110 pins is not free: poll gently, to leave the CPU to the agent.
		time.Sleep(20 * time.Millisecond)
	}
	if len(created) > 0 {
		t.Fatalf("%d pods not attached after 60s; log:\n%s", len(created), a.logText())
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1)+0.5)] }
	agentP99 := a.histogramQuantile("sockhop_attach_latency_seconds", 0.99)
	if v, _ := a.metric("sockhop_pods_accelerated"); v != podCount {
		t.Errorf("sockhop_pods_accelerated = %v, want %d", v, podCount)
	}
	if v, _ := a.metric(`sockhop_attach_total{result="success"}`); v != podCount {
		t.Errorf(`sockhop_attach_total{result="success"} = %v, want %d`, v, podCount)
	}
	for _, s := range []string{"sockhop_datapath_ready", `sockhop_build_info{version="` + testVersion + `"}`} {
		if v, ok := a.metric(s); !ok || v != 1 {
			t.Errorf("%s = %v (present: %v), want 1", s, v, ok)
		}
	}
	if _, ok := a.metric("sockhop_redirected_bytes_total"); !ok {
		t.Error("sockhop_redirected_bytes_total missing")
	}

	// Idle: nothing changes for 10 s.
	time.Sleep(2 * time.Second)
	pid := a.cmd.Process.Pid
	cpu0, t0 := cpuTime(t, pid), time.Now()
	time.Sleep(10 * time.Second)
	cpu1, t1 := cpuTime(t, pid), time.Now()
	idleCPU := float64(cpu1-cpu0) / float64(t1.Sub(t0)) * 100
	rss, hwm := procStatus(t, pid, "VmRSS"), procStatus(t, pid, "VmHWM")

	// Restart: the pins carry on; the new agent must be ready, with
	// nothing re-attached.
	a.stop()
	a2 := f.startAgent()
	restart := a2.waitReady(30 * time.Second)
	if v, _ := a2.metric(`sockhop_attach_total{result="success"}`); v != 0 {
		t.Errorf("restarted agent attached %v pods, want 0", v)
	}
	if v, _ := a2.metric("sockhop_pods_accelerated"); v != podCount {
		t.Errorf("after restart sockhop_pods_accelerated = %v, want %d", v, podCount)
	}

	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("FIGURES pods=%d attach (cgroup created→attached seen in the pins, all at once, ±20ms polling): p50=%s p99=%s max=%s; agent's own histogram p99≈%s | agent RSS=%.1f MiB (peak %.1f MiB) | idle CPU=%.2f%% of a core over %s | restart convergence (exec→ready)=%s",
		podCount, pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), latencies[len(latencies)-1].Round(time.Millisecond), agentP99.Round(time.Millisecond),
		float64(rss)/(1<<20), float64(hwm)/(1<<20), idleCPU, t1.Sub(t0).Round(time.Millisecond), restart.Round(time.Millisecond))
	t.Logf("machine load average during the run: %s", strings.TrimSpace(string(load)))
	fmt.Printf("FIGURES: attach p99 %s (target < 1s); agent RSS %.1f MiB (target < 64 MiB); idle CPU %.2f%% (target < 1%%); restart convergence %s (target < 2s)\n",
		pct(0.99).Round(time.Millisecond), float64(rss)/(1<<20), idleCPU, restart.Round(time.Millisecond))
}

// TestAgentUninstallOnDelete checks that SIGTERM keeps the datapath while
// the agent's DaemonSet exists (restart, upgrade, drain) and removes it once
// the DaemonSet is gone (helm uninstall).
func TestAgentUninstallOnDelete(t *testing.T) {
	f := newFixture(t)
	ns := f.namespace()
	p := f.pods(ns, 1)[0]
	if err := os.Mkdir(f.cgroupDir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	ds := f.createDaemonSet(ns)
	env := []string{"DAEMONSET_NAME=sockhop", "POD_NAMESPACE=" + ns}

	a := f.startAgent(env...)
	a.waitReady(30 * time.Second)
	pinned := func() bool {
		_, err := os.Stat(f.pinDir)
		return err == nil
	}
	a.stop()
	if !pinned() {
		t.Fatalf("datapath removed on SIGTERM although the DaemonSet exists; log:\n%s", a.logText())
	}
	if !strings.Contains(a.logText(), "DaemonSet still exists") {
		t.Errorf("agent did not say why it kept the datapath; log:\n%s", a.logText())
	}

	a = f.startAgent(env...)
	a.waitReady(30 * time.Second)
	if err := f.client.Delete(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
	a.stop()
	if pinned() {
		t.Fatalf("datapath kept after the DaemonSet was deleted; log:\n%s", a.logText())
	}
	if !strings.Contains(a.logText(), "datapath uninstalled") {
		t.Errorf("no uninstall in the log:\n%s", a.logText())
	}
}

// createDaemonSet creates the agent's DaemonSet in ns and returns it.
func (f *fixture) createDaemonSet(ns string) *appsv1.DaemonSet {
	f.t.Helper()
	labels := map[string]string{"app": "sockhop-agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sockhop"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "sockhop-agent"}}},
			},
		},
	}
	if err := f.client.Create(context.Background(), ds); err != nil {
		f.t.Fatal(err)
	}
	return ds
}

// waitLog waits until the agent's log contains s.
func (a *agentProc) waitLog(s string, timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(a.logText(), s) {
		if time.Now().After(deadline) {
			a.t.Fatalf("agent did not log %q within %s; log:\n%s", s, timeout, a.logText())
		}
		select {
		case err := <-a.exited:
			a.t.Fatalf("agent exited (%v) before logging %q; log:\n%s", err, s, a.logText())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readyz returns the status and body of /readyz/datapath ("" when the
// probe server does not answer).
func (a *agentProc) readyz() (int, string) {
	resp, err := http.Get("http://" + a.probe + "/readyz/datapath")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAgentKeepsDatapathWhenDaemonSetReplaced: a DaemonSet deleted and
// re-created under the same name (helm uninstall && helm install, kubectl
// replace --force) is not an uninstall: the old agent, stopping after its
// DaemonSet was seen deleted, leaves the pins to the new one.
func TestAgentKeepsDatapathWhenDaemonSetReplaced(t *testing.T) {
	f := newFixture(t)
	ns := f.namespace()
	p := f.pods(ns, 1)[0]
	if err := os.Mkdir(f.cgroupDir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	ds := f.createDaemonSet(ns)
	env := []string{"DAEMONSET_NAME=sockhop", "POD_NAMESPACE=" + ns}
	a := f.startAgent(env...)
	a.waitReady(30 * time.Second)

	if err := f.client.Delete(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
	a.waitLog("the agent's DaemonSet is being deleted", 10*time.Second)
	replacement := f.createDaemonSet(ns)
	if replacement.UID == ds.UID {
		t.Fatal("the re-created DaemonSet has the old UID")
	}
	a.waitLog("a new DaemonSet of the same name replaces the agent's", 10*time.Second)
	a.stop()
	if _, err := os.Stat(f.pinDir); err != nil {
		t.Fatalf("the old agent removed the datapath although its DaemonSet was replaced (%v); log:\n%s", err, a.logText())
	}
	if !strings.Contains(a.logText(), "replaced by another") {
		t.Errorf("agent did not say why it kept the datapath; log:\n%s", a.logText())
	}
	ro, err := datapath.Open(f.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if atts, err := ro.Attachments(); err != nil || len(atts) != 1 {
		t.Fatalf("attachments after the old agent stopped: %v, %v; want the pod's", atts, err)
	}
}

// TestAgentsOnOneNodeTakeTurns: a second agent on the node (a re-created
// DaemonSet, a surge) waits for the first to exit before touching the pins.
func TestAgentsOnOneNodeTakeTurns(t *testing.T) {
	f := newFixture(t)
	ns := f.namespace()
	p := f.pods(ns, 1)[0]
	if err := os.Mkdir(f.cgroupDir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	first := f.startAgent()
	first.waitReady(30 * time.Second)
	second := f.startAgent()
	second.waitLog("another sockhop agent holds the node lock", 10*time.Second)
	if code, _ := second.readyz(); code != 0 {
		t.Fatalf("the second agent serves probes (%d) while the first holds the node", code)
	}
	if strings.Contains(second.logText(), "datapath loaded") {
		t.Fatalf("the second agent loaded the datapath while the first ran; log:\n%s", second.logText())
	}
	first.stop()
	second.waitReady(30 * time.Second)
	if v, _ := second.metric("sockhop_pods_accelerated"); v != 1 {
		t.Errorf("after the hand-over sockhop_pods_accelerated = %v, want 1", v)
	}
}

// TestAgentDegradedOnLoadFailure: a load failure that is not a missing
// kernel feature (here a pin the datapath cannot open) leaves the agent up
// and unready with the reason, and sockhop_datapath_ready at 0.
func TestAgentDegradedOnLoadFailure(t *testing.T) {
	f := newFixture(t)
	// bpffs holds directories; one where a map pin belongs cannot be opened.
	if err := os.MkdirAll(filepath.Join(f.pinDir, "maps", "sockhop_socks"), 0o700); err != nil {
		t.Fatal(err)
	}
	a := f.startAgent()
	deadline := time.Now().Add(30 * time.Second)
	var (
		code int
		body string
	)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, body = a.readyz(); code != 0 {
			break
		}
		select {
		case err := <-a.exited:
			t.Fatalf("agent exited (%v) instead of degrading; log:\n%s", err, a.logText())
		default:
		}
	}
	if code != http.StatusInternalServerError || !strings.Contains(body, "degraded") || !strings.Contains(body, "sockhop_socks") {
		t.Fatalf("/readyz/datapath = %d %q, want 500 with the reason; log:\n%s", code, body, a.logText())
	}
	if v, ok := a.metric("sockhop_datapath_ready"); !ok || v != 0 {
		t.Errorf("sockhop_datapath_ready = %v (present: %v), want 0", v, ok)
	}
	select {
	case err := <-a.exited:
		t.Fatalf("degraded agent exited (%v); log:\n%s", err, a.logText())
	case <-time.After(2 * time.Second):
	}
}
